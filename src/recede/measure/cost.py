"""The layer-aware cost model of a training step (SPEC §2, "Layer-aware cost").

Paper A's count (SPEC §2, :func:`uniform_ratio`) charges every block one forward, one
input-VJP and one weight-gradient, which is right for one-layer blocks only: inside a block of
several layers the later layers' input-VJPs are needed for the earlier layers' weight
gradients, so a weight-only pass skips only the first layer's input-VJP.  This model measures
per block t four passes and per depth k one head pass (:func:`calibrate`):

* F_t — the block's forward, building its graph;
* D_t — the input-only vector–Jacobian product through the block;
* W_t — the weight-gradient pass (with the inner input-VJPs it needs, not the first layer's);
* B_t — the full backward (input and weights);
* H_k — head k's forward and backward to x_k and the head's parameters (loss included).

and counts which passes :class:`recede.MPC` makes at horizon h (:func:`passes`): every block is
forwarded once; every evaluated depth k costs H_k; a target k < T carries its cotangent down
through blocks k−1 … k−h+1 (one D each) and takes block k−h's weights (W; LoCo's double rule
also takes block k−h+1's, which then needs its input-VJP too: B); the final sweep from x_T takes
B for blocks T−h+1 … T−1 and W for block T−h, whose input gradient nobody needs.  So BP is
Σ F_t + W_0 + Σ_{t≥1} B_t + H_T, and a method's predicted ratio is its sum over BP's.
Checkpointed BP (:mod:`recede.core.recompute`) adds a second forward of every segment but the last.

The passes are measured on the model itself, so the model needs no layer count; ``meter`` can
be wall time (:func:`recede.measure.usage.interleaved_medians`) or any other additive measure (the
tests use FLOPs, for which the prediction is exact).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import torch

from recede.core.blocks import BlockNet, even_groups
from recede.core.chains import chains
from recede.core.engine import MPC
from recede.core.recompute import CheckpointedBP

Runs = Mapping[str, Callable[[], object]]
Meter = Callable[[Runs], Mapping[str, float]]


def uniform_ratio(T: int, h: int) -> float:
    """Paper A's uncalibrated count (SPEC §2): ``(2 + ((T−h)(h−1) + h)/T) / 3``, every block
    costing F = input-VJP = weight-gradient = 1 and BP = 3 per block."""
    return (2 + ((T - h) * (h - 1) + h) / T) / 3


@dataclass(frozen=True)
class BlockCosts:
    """Measured cost of each pass: ``forward[t]`` F_t, ``input_vjp[t]`` D_t, ``weight_grad[t]``
    W_t, ``backward[t]`` B_t for blocks t = 0..T−1, and ``head[k-1]`` H_k for depths 1..T."""

    forward: tuple[float, ...]
    input_vjp: tuple[float, ...]
    weight_grad: tuple[float, ...]
    backward: tuple[float, ...]
    head: tuple[float, ...]

    @property
    def T(self) -> int:
        return len(self.forward)

    def groups(self, n: int) -> BlockCosts:
        """The costs of :meth:`recede.BlockNet.regroup`'s ``n`` groups (LoCo's blocks): a group
        sums its blocks' F, D and B; its weight pass is its first block's W plus the full
        backward of the blocks above it; its head is the head of its last block."""
        bounds = [list(group) for group in even_groups(self.T, n)]

        def total(values: tuple[float, ...], part: list[int]) -> float:
            return sum(values[t] for t in part)

        return BlockCosts(
            tuple(total(self.forward, p) for p in bounds),
            tuple(total(self.input_vjp, p) for p in bounds),
            tuple(self.weight_grad[p[0]] + total(self.backward, p[1:]) for p in bounds),
            tuple(total(self.backward, p) for p in bounds),
            tuple(self.head[p[-1]] for p in bounds),
        )


@dataclass(frozen=True)
class Passes:
    """How many W, B and D passes each block gets in one step, and the depths whose head runs."""

    weight_grad: tuple[int, ...]
    backward: tuple[int, ...]
    input_vjp: tuple[int, ...]
    heads: tuple[int, ...]


def passes(T: int, horizon: int, double: bool = False) -> Passes:
    """The passes of one :class:`recede.MPC` step at ``horizon`` (SPEC §2's algorithm).

    Each target depth k (k ≥ h; k ≥ h − 1 with ``double``) sends its cotangent down to the
    lowest block that learns from it, k − h (≥ 0); a block above that lowest one that also
    learns from k takes a full backward B, one that only passes the cotangent on takes D, and
    the lowest takes W.  At k = T every block of the window T−h … T−1 learns from x_T.
    """
    W, B, D = [0] * T, [0] * T, [0] * T
    steps = chains(T, horizon, double)
    for chain in steps:
        for j in range(chain.lowest, chain.depth):
            if j == chain.lowest:
                W[j] += 1
            elif j in chain.weighted:
                B[j] += 1
            else:
                D[j] += 1
    return Passes(tuple(W), tuple(B), tuple(D), tuple(c.depth for c in steps))


def recomputed_forwards(T: int, horizon: int, double: bool = False) -> tuple[int, ...]:
    """How many times ``MPC(..., recompute=True)`` recomputes each block's forward: once for
    every sweep that passes through it, but the first sweep of block t when it is target t + 1's
    (that sweep uses the graph of the forward itself)."""
    steps = chains(T, horizon, double)
    targets = {c.depth for c in steps}
    sweeps = [sum(1 for c in steps if c.lowest <= t < c.depth) for t in range(T)]
    return tuple(max(n - (1 if t + 1 in targets else 0), 0) for t, n in enumerate(sweeps))


def horizon_cost(costs: BlockCosts, horizon: int, double: bool = False, recompute: bool = False) -> float:
    """Predicted cost of one :class:`recede.MPC` step: Σ F_t plus the counted W, B, D and heads
    (and, with ``recompute``, the recomputed forwards)."""
    n = passes(costs.T, horizon, double)
    extra = recomputed_forwards(costs.T, horizon, double) if recompute else (0,) * costs.T
    return (
        sum(costs.forward)
        + sum(c * e for c, e in zip(costs.forward, extra))
        + sum(c * w for c, w in zip(costs.weight_grad, n.weight_grad))
        + sum(c * b for c, b in zip(costs.backward, n.backward))
        + sum(c * d for c, d in zip(costs.input_vjp, n.input_vjp))
        + sum(costs.head[k - 1] for k in n.heads)
    )


def recomputed_bp_cost(costs: BlockCosts, segments: int) -> float:
    """Predicted cost of a :class:`recede.core.recompute.CheckpointedBP` step with ``segments``
    segments: every forward once, every segment but the last once more, B for every block but
    block 0, which differentiates only its weights (the input is data), and the final head."""
    last = even_groups(costs.T, segments)[-1]
    return (
        2 * sum(costs.forward)
        - sum(costs.forward[t] for t in last)
        + sum(costs.backward)
        - costs.input_vjp[0]
        + costs.head[-1]
    )


def predicted_ratio(costs: BlockCosts, method: object) -> float | None:
    """A method's predicted step cost over BP's, or None where the model has no count (a
    BP-modified method, whose refresh is measured, not modelled; selective checkpointing, which
    recomputes only part of each forward)."""
    bp = horizon_cost(costs, costs.T)
    if isinstance(method, CheckpointedBP):
        return None if method.selective else recomputed_bp_cost(costs, method.segments) / bp
    if isinstance(method, MPC):
        view = costs if method.net.T == costs.T else costs.groups(method.net.T)
        return horizon_cost(view, method.horizon, method.double, getattr(method, "recompute", False)) / bp
    return None


def probes(net: BlockNet, x: torch.Tensor, y: torch.Tensor) -> dict[str, Callable[[], object]]:
    """The passes to measure, as calls named ``F<t>``, ``D<t>``, ``W<t>``, ``B<t>``, ``H<k>``.

    One forward gives each block its real input; each block's graph is built once and kept
    (``retain_graph``) so D, W and B are measured on it alone, with a random cotangent.  A block
    whose input cannot carry a gradient (token ids) has no D, and its B is its W.
    """
    runs: dict[str, Callable[[], object]] = {}
    z = x.detach()
    with torch.enable_grad():
        for t, block in enumerate(net.blocks):
            differentiable = z.is_floating_point() or z.is_complex()
            z = z.detach().requires_grad_(differentiable)
            out = block(z)
            params = net.block_parameters(t)
            c = torch.randn_like(out)
            runs[f"F{t}"] = partial(block, z)
            if differentiable:
                runs[f"D{t}"] = _vjp(out, [z], c)
                runs[f"B{t}"] = _vjp(out, [z, *params], c)
            if params:
                runs[f"W{t}"] = _vjp(out, params, c)
            z_k = out.detach().requires_grad_()
            head = [z_k, *(p for p in net.head(t + 1).parameters() if p.requires_grad)]
            runs[f"H{t + 1}"] = partial(_head_gradient, net, z_k, y, t + 1, head)
            z = out
    return runs


def _head_gradient(
    net: BlockNet, z: torch.Tensor, y: torch.Tensor, k: int, inputs: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, ...]:
    """Head k's loss, differentiated with respect to its input and its parameters."""
    return torch.autograd.grad(net.depth_loss(z, y, k), inputs, allow_unused=True)


def _vjp(out: torch.Tensor, inputs: Sequence[torch.Tensor], c: torch.Tensor) -> Callable[[], object]:
    return lambda: torch.autograd.grad(out, inputs, c, retain_graph=True, allow_unused=True)


def calibrate(
    net: BlockNet, x: torch.Tensor, y: torch.Tensor, meter: Meter, alongside: Runs | None = None
) -> tuple[BlockCosts, dict[str, float]]:
    """Measure every pass of :func:`probes` on ``(x, y)`` with ``meter``; return the block costs
    and the meter's values of the ``alongside`` runs, measured in the same call (with
    :func:`recede.measure.usage.interleaved_medians`, in the same rounds, so machine load hits the
    model and the methods it predicts alike).  The passes run on a copy of ``net``, so neither
    its buffers (BatchNorm statistics) change nor do the runs' changes to them reach the graphs
    the passes keep."""
    values = dict(meter({**probes(copy.deepcopy(net), x, y), **(alongside or {})}))
    T = net.T
    W = tuple(values.get(f"W{t}", 0.0) for t in range(T))
    costs = BlockCosts(
        tuple(values[f"F{t}"] for t in range(T)),
        tuple(values.get(f"D{t}", 0.0) for t in range(T)),
        W,
        tuple(values.get(f"B{t}", W[t]) for t in range(T)),
        tuple(values[f"H{k}"] for k in range(1, T + 1)),
    )
    return costs, {name: values[name] for name in (alongside or {})}
