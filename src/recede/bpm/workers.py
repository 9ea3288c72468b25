"""How BP-modified's refresh is shared among processes: the :class:`Workers` strategy.

A refresh (Paper B Algorithm 1, lines 4–9) forms sums over micro-batches.  With several
data-parallel processes those sums must cover all ranks' samples, and the ranks split the B'
samples of one refresh among them.  :class:`~recede.bpm.estimator.BPModified` asks its
``workers`` for both, so the data-parallel wrapper plugs itself in
(:meth:`~recede.bpm.estimator.BPModified.share_refreshes`) instead of replacing the method's
functions.  :class:`SingleProcess`, the default, leaves everything as it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, TypeVar

import torch

Item = TypeVar("Item")


class Workers(Protocol):
    """The processes that share one BP-modified refresh."""

    world_size: int

    def sum_statistics(self, stats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each tensor of ``stats`` (a sum over this process's micro-batches) summed over all
        processes; may work in place; returns the dict."""
        ...

    def share(self, micro_batches: Iterator[Any]) -> Iterator[Any]:
        """This process's part of a refresh's micro-batches (the same sequence on every process)."""
        ...


class SingleProcess:
    """One process: statistics and micro-batches stay as they are."""

    world_size = 1

    def sum_statistics(self, stats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return stats

    def share(self, micro_batches: Iterator[Item]) -> Iterator[Item]:
        return micro_batches
