"""Back-propagation with activation checkpointing: the memory baseline the horizons compete with.

The T blocks are cut into S segments; the default S = T checkpoints every block, as a user of
``torch.utils.checkpoint`` (or of transformers' ``gradient_checkpointing_enable()``) does.  The
forward keeps only each segment's input; the backward recomputes one segment at a time and
back-propagates through it.  The gradient is exactly BP's (h = T, SPEC §2); the price is a
second forward of every segment but the last, which runs normally because its activations are
needed at once.  At its peak the step holds the S segment inputs plus one segment's internals
(and the gradients it has written so far).

Segments go through ``torch.utils.checkpoint.checkpoint`` with ``use_reentrant=False``,
PyTorch's recommended form: a recomputed segment's saved tensors are freed as soon as the
backward has used them, and no dummy input is needed for parameters to get gradients (the
re-entrant form holds a whole recomputed segment through a nested backward: on ResNet-50 with
16 segments it really used 527 MiB against 311 MiB).  The RNG state of each segment's first
forward is restored for its recomputation (``preserve_rng_state``), so dropout draws the same
mask.  A recomputed forward would update BatchNorm running statistics a second time (as any
use of ``torch.utils.checkpoint`` does); the buffers of the recomputed segments are put back to
their values after the first forward, so the model ends each step exactly as BP leaves it.

Memory: what the saved-tensor meter (:class:`recede.measure.memory.SavedTensorMeter`) counts of a
checkpointed step depends on how the checkpoint's own saved-tensor hooks nest with it (on a
GPT-2 of 16 layers it read 46 MiB where the step allocated 52); the real peak
(:func:`recede.measure.memory.allocation_peak`) sees everything the step holds and is the figure to
compare (``benchmarks/real_memory.py``).

Selective checkpointing (``selective=True``, the method ``sac[:S]``) is the same recomputation with
PyTorch's op-level policy (``torch.utils.checkpoint.create_selective_checkpoint_contexts``): inside
a checkpointed segment, the outputs of the ops in :data:`SAVED_OPS` (matrix products ``mm``,
``addmm``, ``bmm``, ``baddbmm``; ``convolution``; the fused scaled-dot-product attention kernels)
are kept from the first forward, and every other op (norms, activations, dropout, softmax,
residual adds, reshapes, embeddings) runs again in the backward, reading the kept outputs instead
of recomputing the products.  The recomputation therefore costs only the cheap ops, and the forward
holds the segment inputs plus those outputs: more than ``ckpt``, less than BP, on a transformer
with fused attention.  The gradient is still exactly BP's.  A kept output must not be modified in
place later in its segment (``y = conv(x); y += r``): PyTorch refuses to hand the modified tensor
to the recomputation, and the step raises at the backward, naming the block (the ``.grad`` of
the blocks above it is already written by then).  Where PyTorch supports it
(``respect_saved_tensors_hooks``), the kept outputs go through the user's saved-tensor hooks, so
the saved-tensor meter counts them.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from recede.core.blocks import BlockNet, even_groups
from recede.core.engine import NonFiniteLossError, check_net
from recede.core.replay import kept_buffers

SAVED_OPS: frozenset = frozenset(
    getattr(torch.ops.aten, name).default
    for name in (
        "mm",
        "addmm",
        "bmm",
        "baddbmm",
        "convolution",
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
        "_scaled_dot_product_fused_attention_overrideable",
    )
    if hasattr(torch.ops.aten, name)  # the attention kernels differ between PyTorch versions
)
"""The ATen ops whose outputs selective checkpointing keeps; every other op is recomputed."""

_HOOKS_OPTION = "respect_saved_tensors_hooks" in inspect.signature(checkpoint).parameters


def _keep_products(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> Any:
    """The selective policy: keep the outputs of :data:`SAVED_OPS`, recompute the rest."""
    return CheckpointPolicy.MUST_SAVE if op in SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def _selective_contexts() -> Any:
    """A fresh pair of contexts (and cache) for one checkpointed segment."""
    return create_selective_checkpoint_contexts(_keep_products)


class CheckpointedBP:
    """``backward(x, y)``: BP's gradient with only S segment inputs kept through the forward.

    Args:
        net: the block network.
        segments: S in [1, T]; ``None`` is T, one segment per block (S = 1 is plain BP).
        selective: keep the outputs of :data:`SAVED_OPS` inside each segment and recompute only
            the other ops (selective checkpointing, the method ``sac``; see the module).
    """

    def __init__(self, net: BlockNet, segments: int | None = None, *, selective: bool = False) -> None:
        net = check_net(net, "CheckpointedBP")
        segments = net.T if segments is None else segments
        if isinstance(segments, bool) or not isinstance(segments, int) or not 1 <= segments <= net.T:
            raise ValueError(
                f"checkpoint segments must be an integer in [1, {net.T}] (T = {net.T} blocks), got {segments!r}"
            )
        self.net = net
        self.segments = segments
        self.selective = selective
        self._options: dict[str, Any] = {}
        if selective:
            self._options["context_fn"] = _selective_contexts
            if _HOOKS_OPTION:
                self._options["respect_saved_tensors_hooks"] = True
        self._segments = [list(group) for group in even_groups(net.T, segments)]

    def backward(self, x: Any, y: Any, *, scaler: torch.amp.GradScaler | None = None) -> float:
        """Forward with checkpoints, accumulate BP's gradient into ``.grad``, return L(x_T).

        With an enabled ``scaler`` the loss is scaled before the backward and a non-finite loss
        is left to ``scaler.step`` (see :meth:`recede.MPC.backward`).
        """
        net = self.net
        recomputed = [net.blocks[t] for segment in self._segments[:-1] for t in segment]
        scaling = scaler is not None and scaler.is_enabled()
        with torch.enable_grad():
            z = x
            for segment in self._segments[:-1]:
                z = checkpoint(self._run, segment, z, use_reentrant=False, preserve_rng_state=True, **self._options)
            loss = net.depth_loss(self._run(self._segments[-1], z), y, net.T)
            if not scaling and not bool(torch.isfinite(loss)):
                raise NonFiniteLossError(
                    f"non-finite loss at depth {net.T}: {float(loss.detach())}; no .grad was modified"
                )
            with kept_buffers(recomputed):  # the backward's recomputation runs their forwards again
                (scaler.scale(loss) if scaling and scaler is not None else loss).backward()
        return float(loss.detach())

    def _run(self, segment: list[int], z: Any) -> Any:
        for t in segment:
            z = self.net.run_block(t, z)
        return z
