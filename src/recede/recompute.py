"""Back-propagation with activation checkpointing: the memory baseline the horizons compete with.

The T blocks are cut into S segments (default S = round(√T), the classic choice of Chen et al.
2016 that makes kept boundaries and one recomputed segment both O(√T)).  The forward keeps only
each segment's input; the backward recomputes one segment at a time and back-propagates
through it.  The gradient is exactly BP's (h = T, SPEC §2); the price is a second forward of
every segment but the last, which runs normally because its activations are needed at once.

Segments go through ``torch.utils.checkpoint.checkpoint`` with ``use_reentrant=True``: the
re-entrant form recomputes inside an ordinary nested backward, so the tensors a segment saves
while it is recomputed pass through the saved-tensor hooks that
:class:`recede.memory.SavedTensorMeter` installs and are counted.  The non-re-entrant form
keeps them behind its own hooks, where the meter would not see the memory this method costs.
The re-entrant form only gives parameters a gradient when some input of the segment requires
grad; the first segment's input (the batch, perhaps token ids) does not, so a one-element dummy
leaf that does is passed along with it (no input gradient of the batch is computed).  A recomputed forward would update BatchNorm running statistics a second time (as
any use of ``torch.utils.checkpoint`` does); the buffers of the recomputed segments are put back
to their values after the first forward, so the model ends each step exactly as BP leaves it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten
from torch.utils.checkpoint import checkpoint

from recede.blocks import BlockNet
from recede.engine import NonFiniteLossError, check_net


class CheckpointedBP:
    """``backward(x, y)``: BP's gradient with only S segment inputs kept through the forward.

    Args:
        net: the block network.
        segments: S in [1, T]; ``None`` is round(√T).
    """

    def __init__(self, net: BlockNet, segments: int | None = None) -> None:
        net = check_net(net, "CheckpointedBP")
        segments = max(1, round(math.sqrt(net.T))) if segments is None else segments
        if isinstance(segments, bool) or not isinstance(segments, int) or not 1 <= segments <= net.T:
            raise ValueError(f"checkpoint segments must be an integer in [1, {net.T}] "
                             f"(T = {net.T} blocks), got {segments!r}")
        self.net = net
        self.segments = segments
        self._stages = [[int(t) for t in part] for part in torch.arange(net.T).tensor_split(segments)]

    def backward(self, x: Any, y: Any, *, scaler: torch.amp.GradScaler | None = None) -> float:
        """Forward with checkpoints, accumulate BP's gradient into ``.grad``, return L(x_T).

        With an enabled ``scaler`` the loss is scaled before the backward and a non-finite loss
        is left to ``scaler.step`` (see :meth:`recede.MPC.backward`).
        """
        net = self.net
        recomputed = [b for stage in self._stages[:-1] for t in stage for b in net.blocks[t].buffers()]
        scaling = scaler is not None and scaler.is_enabled()
        with torch.enable_grad():
            z = x
            for stage in self._stages[:-1]:
                z = _checkpointed(partial(self._run, stage), z)
            loss = net.depth_loss(self._run(self._stages[-1], z), y, net.T)
            if not scaling and not bool(torch.isfinite(loss)):
                raise NonFiniteLossError(f"non-finite loss at depth {net.T}: {float(loss.detach())}; "
                                         "no .grad was modified")
            after_forward = [b.clone() for b in recomputed]
            (scaler.scale(loss) if scaling and scaler is not None else loss).backward()
        with torch.no_grad():
            for buffer, value in zip(recomputed, after_forward):
                buffer.copy_(value)
        return float(loss.detach())

    def _run(self, stage: list[int], z: Any) -> Any:
        for t in stage:
            z = self.net.run_block(t, z)
        return z


def _checkpointed(stage: Callable[[Any], Any], z: Any) -> Any:
    """``stage(z)`` through the re-entrant checkpoint; ``z`` may be a pytree with integer leaves."""
    leaves, spec = tree_flatten(z)
    tensors = [i for i, t in enumerate(leaves) if isinstance(t, torch.Tensor)]
    anchor = [] if any(leaves[i].requires_grad for i in tensors) else [torch.ones(1, requires_grad=True)]

    def run(*args: torch.Tensor) -> Any:
        filled = list(leaves)
        for i, t in zip(tensors, args):
            filled[i] = t
        return stage(tree_unflatten(filled, spec))

    return checkpoint(run, *(leaves[i] for i in tensors), *anchor, use_reentrant=True)
