"""The horizon engine: g_h for every block in one forward pass with O(h) saved activations.

For a :class:`~recede.blocks.BlockNet` of T blocks, Paper A eq. 9 with Remark 3.2 (and Paper B
eq. 4) defines the horizon-h gradient of block t as

    g_h(u_t) = ∇_{u_t} L(x_{min(t+h, T)}),        h ∈ {1, …, T}.

h = 1 is Forward-Forward / local-loss training (Paper A eq. 4), h = T is back-propagation
(eq. 3, eq. 10).  :class:`MPC` computes it as SPEC §2 prescribes:

* Forward once, block by block.  Each block reads a detached copy ``z_t`` of its input, so
  every block owns a separate small graph and the engine decides when each one is freed.
* When ``x_k`` is produced (h ≤ k < T), take ``c = ∂L(x_k)/∂x_k`` through head k, carry it back
  through blocks k-1 … k-h+1 with input-only vector-Jacobian products (autograd skips the
  weight-gradient kernels of a block when only its input gradient is asked for), and take the
  weight gradient of block k-h, whose graph is then released.  At most h block graphs are
  alive at any time.
* At k = T one ordinary backward sweep over the last h blocks gives their exact gradients.
  For h = T the window is the whole net, so the step is one plain forward and backward
  (no per-block calls: exactly ``loss.backward()``'s work).

Nothing is recomputed and no whole graph is kept (Paper A App. E.1 warns that a kept graph
costs O(h(T-h+1)) memory).  Heads are trained by their own depth's loss: the head at depth k
receives ∇ L(x_k) whenever L(x_k) is the target of some block, i.e. for k ≥ h (k ≥ h-1 with
``double``); heads at shallower depths are not evaluated.  A shared head accumulates the
gradients of every depth it is evaluated at.

``double=True`` is LoCo's rule (Paper A App. B, eq. 20): block t receives
``∇L(x_{t+h-1}) + ∇L(x_{t+h})`` (distinct depths only, capped at T); with h = 2 and stages as
blocks this is LoCo.

Gradients are accumulated into ``.grad`` (added to what is there, as ``loss.backward()`` does)
only after every loss of the step has been checked finite, so a NaN or infinite loss raises
:class:`NonFiniteLossError` with every ``.grad`` untouched.  Frozen parameters
(``requires_grad=False``) receive nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from recede.blocks import BlockNet


class NonFiniteLossError(FloatingPointError):
    """A loss of the step was NaN or infinite; no ``.grad`` was modified."""


def check_horizon(horizon: object, T: int) -> int:
    """Return ``horizon`` if it is an integer in [1, T], else raise ``ValueError`` naming the range."""
    if isinstance(horizon, bool) or not isinstance(horizon, int) or not 1 <= horizon <= T:
        raise ValueError(f"horizon must be an integer in [1, {T}] (T = {T} blocks), got {horizon!r}")
    return horizon


@dataclass
class _Step:
    """One block's graph in the window: its detached input and its output."""

    z: torch.Tensor
    out: torch.Tensor


class MPC:
    """Receding-horizon gradients as a drop-in for ``loss.backward()``.

    >>> engine = MPC(net, horizon=4)
    >>> for x, y in loader:
    ...     opt.zero_grad()
    ...     loss = engine.backward(x, y)     # forward + g_h into every .grad
    ...     opt.step()

    Args:
        net: the block network.
        horizon: h in [1, T]; 1 is FF / local losses, T is exact BP.
        double: LoCo's "double" rule (Paper A eq. 20); requires h ≥ 2.
    """

    def __init__(self, net: BlockNet, horizon: int, double: bool = False) -> None:
        self.net = net
        self.horizon = check_horizon(horizon, net.T)
        if double and horizon < 2:
            raise ValueError("double=True sums the gradients of horizons h-1 and h and needs horizon >= 2")
        self.double = double
        self.last_losses: dict[int, float] = {}

    def target_depths(self) -> list[int]:
        """The depths k whose loss L(x_k) some block learns from."""
        T, h = self.net.T, self.horizon
        first = h - 1 if self.double else h
        return list(range(first, T + 1))

    def backward(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Forward ``x`` once, accumulate g_h into ``.grad`` and return the final loss L(x_T).

        ``self.last_losses`` then maps each evaluated depth k to L(x_k).
        """
        net, T, h = self.net, self.net.T, self.horizon
        grads: dict[nn.Parameter, torch.Tensor] = {}
        losses: dict[int, torch.Tensor] = {}
        self._block_params, self._head_params = net.trainable_parameters()  # once per step

        if not net.heads_checked:
            net.check_heads(x, y)
        with torch.enable_grad():
            if h == T and not self.double:
                self._backprop(x, y, grads, losses)
            else:
                self._receding(x, y, grads, losses)

        stacked = torch.stack([v for v in losses.values()])
        if not bool(torch.isfinite(stacked).all()):
            bad = {k: float(v) for k, v in losses.items() if not torch.isfinite(v)}
            raise NonFiniteLossError(f"non-finite loss at depth(s) {sorted(bad)}: {bad}; "
                                     "no .grad was modified")
        self.last_losses = {k: float(v) for k, v in sorted(losses.items())}
        _write_grads(grads)
        return self.last_losses[T]

    # -- internals -------------------------------------------------------------------------

    def _backprop(self, x: torch.Tensor, y: torch.Tensor, grads: dict, losses: dict) -> None:
        """h = T: the window is the whole net, so one ordinary backward sweep is the method."""
        net = self.net
        for block in net.blocks:
            x = block(x)
        loss = net.depth_loss(x, y, net.T)
        losses[net.T] = loss.detach()
        params = [p for block in self._block_params for p in block] + self._head_params[net.T - 1]
        if params:
            _accumulate(grads, params, torch.autograd.grad(loss, params, allow_unused=True))

    def _receding(self, x: torch.Tensor, y: torch.Tensor, grads: dict, losses: dict) -> None:
        """h < T: a sliding window of h block graphs (see the module docstring)."""
        net, T, h = self.net, self.net.T, self.horizon
        targets = set(self.target_depths())
        window: dict[int, _Step] = {}
        z = x
        for t in range(T):
            out = net.blocks[t](z)
            window[t] = _Step(z, out)
            k = t + 1
            z = out.detach().requires_grad_()
            if k not in targets:
                continue
            c = self._depth_gradient(z, y, k, grads, losses)
            if k == T:
                owners = range(T - 1, max(T - h, 0) - 1, -1)
                self._carry(window, owners, lowest=max(T - h, 0), c=c, grads=grads, final=True)
            else:
                weighted = [k - h] + ([k - h + 1] if self.double else [])
                lowest = max(min(weighted), 0)
                self._carry(window, range(k - 1, lowest - 1, -1), lowest, c, grads,
                            final=False, weighted=weighted)

    def _depth_gradient(self, z_k: torch.Tensor, y: torch.Tensor, k: int,
                        grads: dict, losses: dict) -> torch.Tensor:
        """Evaluate L(x_k), train head k on it, and return c = ∂L(x_k)/∂x_k."""
        loss = self.net.depth_loss(z_k, y, k)
        losses[k] = loss.detach()
        params = self._head_params[k - 1]
        out = torch.autograd.grad(loss, [z_k, *params], allow_unused=True)
        _accumulate(grads, params, out[1:])
        return out[0] if out[0] is not None else torch.zeros_like(z_k)

    def _carry(self, window: dict[int, _Step], blocks: range, lowest: int, c: torch.Tensor,
               grads: dict, final: bool, weighted: list[int] | None = None) -> None:
        """Carry c back through ``blocks`` (descending), taking weight gradients where owed.

        In the final sweep every block in ``blocks`` gets its weight gradient and is released.
        Otherwise only blocks in ``weighted`` get one, and block k-h (= ``weighted[0]``) is
        released after it: that was its last use.
        """
        for j in blocks:
            step = window[j]
            take_weights = final or j in weighted
            release = final or j == weighted[0]
            params = self._block_params[j] if take_weights else []
            inputs = ([step.z] if j > lowest else []) + params
            if inputs and step.out.requires_grad:
                out = torch.autograd.grad(step.out, inputs, c, retain_graph=not release,
                                          allow_unused=True)
                if j > lowest:
                    c = out[0] if out[0] is not None else torch.zeros_like(step.z)
                    out = out[1:]
                _accumulate(grads, params, out)
            elif j > lowest:
                c = torch.zeros_like(step.z)
            if release:
                del window[j]


def _accumulate(grads: dict, params: list[nn.Parameter], values: tuple) -> None:
    for p, g in zip(params, values):
        if g is None:
            continue
        if p in grads:
            grads[p] = grads[p] + g
        else:
            grads[p] = g


def _write_grads(grads: dict[nn.Parameter, torch.Tensor]) -> None:
    """Add each gradient into ``p.grad``; like autograd's AccumulateGrad, never let two
    parameters' ``.grad`` share a tensor (autograd may hand the same tensor to both)."""
    taken: set[int] = set()
    for p, g in grads.items():
        if p.grad is not None:
            p.grad.add_(g)
            continue
        if id(g) in taken:
            g = g.clone()
        taken.add(id(g))
        p.grad = g
