"""Which process this is: :class:`RankState`, the one answer to "which rank am I, how many are
there, am I the main rank".

A process is rank r of the ``torch.distributed`` process group it has joined
(:func:`recede.parallel.data_parallel.init_from_env` joins the one torchrun or
:mod:`recede.parallel.launch` describes); a process in no group is rank 0 of 1.  The main rank
(rank 0) is the one that writes checkpoints, logs and results.  Everything that asks (the
data-parallel wrapper, the pipeline, launchers, the run layer) reads :func:`current` or the
:class:`~recede.parallel.data_parallel.Context` that joining returns, which is a RankState.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch.distributed as dist


@dataclass(frozen=True)
class RankState:
    """This process's place among the processes of one run."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process takes part."""
        return self.world_size > 1

    def __str__(self) -> str:
        return f"rank {self.rank} of {self.world_size}"


def current() -> RankState:
    """This process's state now: its rank in the process group it has joined (local rank from
    ``LOCAL_RANK``), or rank 0 of 1 when it has joined none."""
    if not (dist.is_available() and dist.is_initialized()):
        return RankState(0, 1, 0)
    text = os.environ.get("LOCAL_RANK", "0")
    local = int(text) if text.isascii() and text.isdigit() else 0
    return RankState(dist.get_rank(), dist.get_world_size(), local)
