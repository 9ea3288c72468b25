"""Theorem C.8 of Paper A measured: the loss-decrease rate r(h) against cos²θ_h.

Paper A eq. 14 defines the relative rate of loss decrease of horizon h after τ steps,

    r(h) = ln(J_h(τ) / J_0) / ln(J_T(τ) / J_0),

J_h(τ) the training loss after τ steps with g_h and J_T(τ) the same with back-propagation,
both from the same start with loss J_0.  App. C.3 (Theorem C.8, biased gradient descent) takes
the *rescaled* gradient c_h g_h, c_h = ⟨g_h, g_T⟩ / ‖g_h‖² — eq. 13's best multiple of g_h,
whose inner product with g_T is ‖g_T‖² cos²θ_h — so that μ = cos²θ_h in (62a) and the linear
rate is O(cos²θ_h): r(h) ≈ cos²θ_h, which Algorithm 1 uses as r̂(h).

:func:`decrease_rates` measures both sides on one workload with full-batch gradient descent
(J the loss on the whole training set, no sampling noise: M = 0 in (62c)): for each horizon it
trains from the same weights either with the theorem's rescaled estimator or with g_h as the
reproductions train, and records J after each step and cos θ_h at each step (g_T is computed
every step, which a training run would not need).  The cosine and the steps are over the block
parameters, as in Algorithm 1; heads stay fixed, since the theorem's loss L has no parameters
(training the final head by ∇L(x_T) in both runs would add the same decrease to J_h and J_T).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from recede.core.blocks import BlockNet
from recede.core.engine import MPC
from recede.measure.fidelity import block_gradient_vector


@dataclass(frozen=True)
class HorizonRun:
    """One horizon's full-batch run: J after 0 … τ steps and cos θ_h before each step."""

    horizon: int
    losses: list[float]
    cos: list[float]

    def rate(self, bp: HorizonRun, steps: int) -> float:
        """r(h) of eq. 14 after ``steps`` steps, against the BP run ``bp`` from the same start."""
        J0 = self.losses[0]
        denominator = math.log(bp.losses[steps] / J0)
        return math.log(self.losses[steps] / J0) / denominator if denominator != 0 else float("nan")

    def mean_cos2(self, steps: int) -> float:
        """cos²θ_h averaged over the first ``steps`` steps of this run (μ along the trajectory)."""
        return sum(c * c for c in self.cos[:steps]) / steps


def full_batch_run(
    net: BlockNet, x: torch.Tensor, y: torch.Tensor, horizon: int, steps: int, lr: float, rescale: bool = True
) -> HorizonRun:
    """``steps`` steps of gradient descent ``u ← u − lr·g`` on the batch ``(x, y)``.

    ``g`` is c_h g_h on the block parameters (``rescale``; Theorem C.8's estimator) or g_h
    itself; heads are not trained.  ``net``'s blocks are trained in place.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    blocks = list(dict.fromkeys(p for t in range(net.T) for p in net.block_parameters(t)))
    params = [p for p in net.parameters() if p.requires_grad]
    losses, cos = [], []
    for _ in range(steps):
        g_T, loss = _gradient(net, net.T, x, y, params)
        losses.append(loss)
        g_h = g_T if horizon == net.T else _gradient(net, horizon, x, y, params)[0]
        dot, norm_h, norm_T = float(g_h @ g_T), float(g_h @ g_h), float(g_T @ g_T)
        cos.append(dot / math.sqrt(norm_h * norm_T) if norm_h > 0 and norm_T > 0 else 0.0)
        scale = dot / norm_h if rescale and norm_h > 0 else 1.0
        with torch.no_grad():
            offset = 0
            for p in blocks:
                p.sub_(lr * scale * g_h[offset : offset + p.numel()].view_as(p))
                offset += p.numel()
    with torch.no_grad():
        losses.append(float(net.loss(x, y)))
    return HorizonRun(horizon, losses, cos)


def decrease_rates(
    net: BlockNet, x: torch.Tensor, y: torch.Tensor, horizons: list[int], steps: int, lr: float, rescale: bool = True
) -> dict[int, HorizonRun]:
    """:func:`full_batch_run` for every horizon and for BP, each from ``net``'s current weights
    (``net`` itself is left unchanged)."""
    start = copy.deepcopy(net.state_dict())
    runs = {}
    try:
        for h in sorted(set(horizons) | {net.T}):
            net.load_state_dict(start)
            runs[h] = full_batch_run(net, x, y, h, steps, lr, rescale)
    finally:
        net.load_state_dict(start)
        net.zero_grad(set_to_none=True)
    return runs


def _gradient(net: BlockNet, h: int, x: torch.Tensor, y: torch.Tensor, params: list) -> tuple[torch.Tensor, float]:
    """g_h of the block parameters as one vector, and L(x_T)."""
    for p in params:
        p.grad = None
    loss = MPC(net, h).backward(x, y)
    return block_gradient_vector(net).detach(), loss
