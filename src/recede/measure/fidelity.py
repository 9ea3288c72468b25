"""Gradient fidelity cos θ_h and memory M(h): the measurements of Paper A Algorithm 1.

Paper A eq. 13 measures how far the horizon-h gradient g_h (eq. 9) is from the exact gradient
g_T by the angle between them, over all block parameters ``u_0 … u_{T-1}``:

    cos θ_h = ⟨g_h, g_T⟩ / (‖g_h‖ ‖g_T‖),

computed per batch and averaged over batches (Algorithm 1 lines 7–12).  Lines 1–3 measure the
memory M(h) of each horizon; here it is the peak of bytes saved for backward
(:func:`recede.measure.memory.measure`, SPEC §3), taken on the first batch during the same backward
that produces g_h, so it costs nothing extra.

Each g_h comes from :class:`recede.MPC` (one forward per horizon and batch, O(h) activations);
g_T is computed once per batch and shared by every horizon.  The measurement leaves the network
as it found it: every parameter's ``.grad`` and every buffer (BatchNorm running statistics) is
restored afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from recede.core.blocks import BlockNet
from recede.core.engine import MPC, check_horizon
from recede.measure.memory import measure


@dataclass(frozen=True)
class Fidelity:
    """cos θ_h per batch and horizon, and M(h) in saved bytes (first batch).

    Attributes:
        horizons: the measured horizons, ascending.
        per_batch: ``per_batch[b][i]`` is cos θ_h on batch b for ``h = horizons[i]``.
        memory: saved-for-backward peak bytes of each horizon, or None when not measured.
    """

    horizons: list[int]
    per_batch: list[list[float]]
    memory: dict[int, int] | None

    @property
    def cos(self) -> dict[int, float]:
        """cos θ_h averaged over batches (Algorithm 1 line 11)."""
        n = len(self.per_batch)
        return {h: sum(row[i] for row in self.per_batch) / n for i, h in enumerate(self.horizons)}

    def as_dict(self) -> dict:
        return {
            "horizons": self.horizons,
            "cos": {str(h): v for h, v in self.cos.items()},
            "per_batch": self.per_batch,
            "memory": None if self.memory is None else {str(h): m for h, m in self.memory.items()},
        }


def gradient_cosine(
    net: BlockNet,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    horizons: Sequence[int],
    measure_memory: bool = True,
) -> Fidelity:
    """cos θ_h between g_h and g_T over all block parameters, per batch and averaged.

    Args:
        net: the block network (its ``.grad`` and buffers are restored afterwards).
        batches: ``(x, y)`` pairs; at least one.
        horizons: horizons in [1, T] to measure.
        measure_memory: also record M(h), the saved-for-backward peak bytes on the first batch.
    """
    T = net.T
    hs = sorted({check_horizon(h, T) for h in horizons})
    if not hs:
        raise ValueError("horizons is empty; give at least one horizon in [1, T]")
    params = list(net.parameters())
    saved_grads = [p.grad for p in params]
    saved_buffers = [b.detach().clone() for b in net.buffers()]
    per_batch: list[list[float]] = []
    memory: dict[int, int] | None = {} if measure_memory else None
    try:
        for x, y in batches:
            record = memory if memory is not None and not per_batch else None
            g_T = _block_gradient(net, T, x, y, params, record)
            per_batch.append(
                [_cosine(g_T if h == T else _block_gradient(net, h, x, y, params, record), g_T) for h in hs]
            )
    finally:
        for p, g in zip(params, saved_grads):
            p.grad = g
        with torch.no_grad():
            for b, value in zip(net.buffers(), saved_buffers):
                b.copy_(value)
    if not per_batch:
        raise ValueError("batches is empty; gradient_cosine needs at least one (x, y) batch")
    if memory is not None:
        memory = {h: memory[h] for h in hs}
    return Fidelity(hs, per_batch, memory)


def block_gradient_vector(net: BlockNet) -> torch.Tensor:
    """The ``.grad`` of every block parameter (zeros where None), flattened in block order;
    a parameter several blocks share appears once."""
    params = dict.fromkeys(p for t in range(net.T) for p in net.block_parameters(t))
    parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
    return torch.cat(parts)


def _block_gradient(
    net: BlockNet,
    h: int,
    x: torch.Tensor,
    y: torch.Tensor,
    params: list[torch.nn.Parameter],
    memory: dict[int, int] | None,
) -> torch.Tensor:
    """g_h on one batch as a vector, computed from clean ``.grad`` slots."""
    for p in params:
        p.grad = None
    engine = MPC(net, h)
    if memory is None:
        engine.backward(x, y)
    else:
        _, report = measure(lambda: engine.backward(x, y), module=net)
        memory[h] = report.saved_peak_bytes
    return block_gradient_vector(net).detach()


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """⟨a, b⟩ / (‖a‖‖b‖); 0 when either vector is zero (no direction to compare)."""
    denominator = a.norm() * b.norm()
    if denominator == 0:
        return 0.0
    return float(torch.dot(a, b) / denominator)
