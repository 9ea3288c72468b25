"""The horizon engine: g_h for every block in one forward pass with O(h) saved activations.

For a :class:`~recede.core.blocks.BlockNet` of T blocks, Paper A eq. 9 with Remark 3.2 (and Paper B
eq. 4) defines the horizon-h gradient of block t as

    g_h(u_t) = ∇_{u_t} L(x_{min(t+h, T)}),        h ∈ {1, …, T}.

h = 1 is Forward-Forward / local-loss training (Paper A eq. 4), h = T is back-propagation
(eq. 3, eq. 10).  :class:`MPC` computes it as SPEC §2 prescribes:

* Forward once, block by block.  Each block reads a detached copy ``z_t`` of its input (every
  floating-point tensor of it, when states are tuples or dicts), so every block owns a separate
  small graph and the engine decides when each one is freed.
* When ``x_k`` is produced (k ≥ h), L(x_k) is evaluated on block k-1's own output and its
  gradient is carried back through blocks k-1 … k-h+1 with input-only vector-Jacobian products
  (autograd skips the weight-gradient kernels of a block when only its input gradient is asked
  for); block k-h takes its weight gradient and its graph is released.  The head's backward,
  block k-1's and the head's own weight gradient are one autograd call.  At most h block graphs
  are alive at any time.
* At k = T one backward sweep over the last h blocks gives their exact gradients.  For h = T the
  window is the whole net, so the step is one plain forward and backward (exactly
  ``loss.backward()``'s work).

Nothing is recomputed and no whole graph is kept (Paper A App. E.1 warns that a kept graph
costs O(h(T-h+1)) memory).

``recompute=True`` trades time for memory below even per-block recomputation's floor (``ckpt``).  The
window keeps only the inputs of its h blocks (the boundaries x_{k-h} … x_{k-1}; x_k is the
output being produced), not their graphs: a block's graph is built by its forward, used by the
sweep of the first target that needs it and freed, and each later sweep that passes through
the block rebuilds it from the kept input (:mod:`recede.core.replay`: same random draws, BatchNorm
statistics updated once), uses it once and frees it before the next block down is rebuilt.  At
any time the step holds h + 1 boundaries plus one block's graph (and a head's).  A block takes
part in the sweeps of the targets k with k-h ≤ t < k, at most h of them, and its forward runs
once per sweep and no more: the first sweep uses the graph of the forward itself, so at most
h - 1 forwards per block are recomputed (none at h = 1, where the method is already local; at
h = T the only sweep is the final one and the method is per-block recomputation (``ckpt``): every block
but the last runs twice).  The gradients are exactly those of ``recompute=False``.  Heads are trained by
their own depth's loss: the head at depth k
receives ∇ L(x_k) whenever L(x_k) is the target of some block, i.e. for k ≥ h (k ≥ h-1 with
``double``); heads at shallower depths are not evaluated.  A shared head accumulates the
gradients of every depth it is evaluated at.  A parameter used in several places gets the sum
over its uses (SPEC §1, :class:`~recede.core.blocks.Uses`): each block's and each head's autograd
call sees only its own use.

``double=True`` is LoCo's rule (Paper A App. B, eq. 20): block t receives
``∇L(x_{t+h-1}) + ∇L(x_{t+h})`` (distinct depths only, capped at T); with h = 2 and LoCo's groups
(:meth:`~recede.core.blocks.BlockNet.regroup`) as blocks this is LoCo.

Gradients are accumulated into ``.grad`` (added to what is there, as ``loss.backward()`` does)
only after every loss of the step has been checked finite, so a NaN or infinite loss raises
:class:`NonFiniteLossError` with every ``.grad`` untouched.  With a ``torch.amp.GradScaler``
every loss is scaled before its backward and a non-finite value does not raise: the scaled
gradients are written and ``scaler.step`` skips the step, as it does after
``scaler.scale(loss).backward()``.  The caller's ``torch.autocast`` applies to every forward.
Frozen parameters (``requires_grad=False``) receive nothing.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, SupportsIndex, cast

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_leaves, tree_unflatten

from recede.core.blocks import BlockNet, Uses, describe, keep_compiled_graphs, samples_in
from recede.core.chains import Chain, chains
from recede.core.replay import RngState, capture, replaying

Grads = dict[nn.Parameter, torch.Tensor]


class NonFiniteLossError(FloatingPointError):
    """A loss of the step was NaN or infinite; no ``.grad`` was modified."""


def check_horizon(horizon: object, T: int) -> int:
    """``horizon`` as an int if it is an integer in [1, T] (Python, NumPy or a 0-d tensor),
    else ``ValueError`` naming the range."""
    try:
        scalar = not isinstance(horizon, bool) and not (isinstance(horizon, torch.Tensor) and horizon.dim())
        h = operator.index(cast(SupportsIndex, horizon)) if scalar else None  # TypeError: not an integer
    except TypeError:
        h = None
    if h is None or not 1 <= h <= T:
        raise ValueError(f"horizon must be an integer in [1, {T}] (T = {T} blocks), got {horizon!r}")
    return h


def check_net(net: object, who: str) -> BlockNet:
    """``net`` if it is a BlockNet; a compiled or foreign module gets a message saying what to do."""
    if isinstance(net, BlockNet):
        return net
    if isinstance(getattr(net, "_orig_mod", None), BlockNet):
        raise ValueError(
            f"{who} got torch.compile(net): the engine calls each block and head on "
            "its own, so the compiled forward would never run; compile them in place "
            "with net.compile(...) (same arguments as torch.compile) and pass net"
        )
    raise ValueError(
        f"{who} needs a recede.BlockNet, got {type(net).__name__}; "
        "make one with recede.wrap(model) or recede.BlockNet(blocks, heads, loss_fn)"
    )


@dataclass
class StepGradients:
    """What one step computed, before anything is written to ``.grad``.

    ``blocks[t]`` holds the gradient of block t's use of each of its parameters (a parameter in
    several blocks appears in each), ``heads`` the heads' uses summed over the evaluated depths,
    ``losses`` L(x_k) per evaluated depth (detached, unscaled).  With a GradScaler the
    gradients are scaled by ``scale`` (a 0-d tensor).  When the step was one plain backward over
    a net whose parameters are shared (h = T without ``per_use``), a shared parameter's total
    sits in the first place that uses it.
    """

    blocks: list[Grads]
    heads: Grads = field(default_factory=dict)
    losses: dict[int, torch.Tensor] = field(default_factory=dict)
    scale: torch.Tensor | None = None

    def total(self) -> Grads:
        """Every parameter's gradient: the sum over its uses."""
        out: Grads = {}
        for grads in (*self.blocks, self.heads):
            accumulate(out, grads.keys(), grads.values())
        return out

    def check_finite(self) -> None:
        """Raise :class:`NonFiniteLossError` naming the depths whose loss is NaN or infinite."""
        if bool(torch.isfinite(torch.stack(list(self.losses.values()))).all()):
            return
        bad = {k: float(v) for k, v in self.losses.items() if not bool(torch.isfinite(v))}
        raise NonFiniteLossError(f"non-finite loss at depth(s) {sorted(bad)}: {bad}; no .grad was modified")


class MPC:
    """Receding-horizon gradients as a drop-in for ``loss.backward()``.

    >>> engine = MPC(net, horizon=4)
    >>> for x, y in loader:
    ...     opt.zero_grad()
    ...     loss = engine.backward(x, y)     # forward + g_h into every .grad
    ...     opt.step()

    Mixed precision: run ``engine.backward(x, y, scaler=scaler)`` inside ``torch.autocast`` and
    step with ``scaler.step(opt); scaler.update()`` as usual.

    Args:
        net: the block network.
        horizon: h in [1, T]; 1 is FF / local losses, T is exact BP.
        double: LoCo's "double" rule (Paper A eq. 20); requires h ≥ 2.
        recompute: keep only the window's block inputs and rebuild each block's graph when a
            sweep needs it (see the module docstring): less memory, up to h - 1 extra forwards
            per block, the same gradients.
    """

    def __init__(self, net: BlockNet, horizon: int, double: bool = False, recompute: bool = False) -> None:
        self.net = check_net(net, "MPC")
        self.horizon = check_horizon(horizon, net.T)
        if double and self.horizon < 2:
            raise ValueError("double=True sums the gradients of horizons h-1 and h and needs horizon >= 2")
        self.double = double
        self.recompute = bool(recompute)
        self._losses: dict[int, torch.Tensor] = {}

    @property
    def last_losses(self) -> dict[int, float]:
        """L(x_k) of the last step for each evaluated depth k (unscaled)."""
        return {k: float(v) for k, v in self._losses.items()}

    def chains(self) -> list[Chain]:
        """The chains of one step (:func:`recede.core.chains.chains`: the horizon rule)."""
        return chains(self.net.T, self.horizon, self.double)

    def target_depths(self) -> list[int]:
        """The depths k whose loss L(x_k) some block learns from."""
        return [c.depth for c in self.chains()]

    def backward(self, x: Any, y: Any, *, scaler: torch.amp.GradScaler | None = None) -> float:
        """Forward ``x`` once, accumulate g_h into ``.grad`` and return the final loss L(x_T).

        With an enabled ``scaler`` the gradients are scaled (``scaler.step`` unscales them) and
        a non-finite loss is left to the scaler; the returned loss is unscaled.
        """
        step = self.gradients(x, y, scaler=scaler)
        write_grads(step.total())
        return float(step.losses[self.net.T])

    def gradients(
        self, x: Any, y: Any, *, scaler: torch.amp.GradScaler | None = None, per_use: bool = False
    ) -> StepGradients:
        """One step's g_h per use, without touching ``.grad`` (see :class:`StepGradients`).

        ``per_use``: keep each use of a shared parameter apart even at h = T (BP-modified needs
        each block's own g_T); that step then runs block by block instead of as one backward.
        Raises :class:`NonFiniteLossError` on a NaN or infinite loss unless ``scaler`` is enabled.
        """
        _check_batch(x, y)
        scaling = scaler is not None and scaler.is_enabled()
        uses = self.net.trainable_parameters()
        step = StepGradients([{} for _ in range(self.net.T)])
        keep_compiled_graphs([*self.net.blocks, *self.net.heads])
        with torch.enable_grad():
            if scaling and scaler is not None:
                step.scale = scaler.scale(torch.ones((), device=_device_of(x)))
            if self.horizon == self.net.T and not (self.double or self.recompute or (per_use and uses.shared)):
                self._backprop(x, y, uses, step)
            else:
                self._receding(x, y, uses, step)
        self._losses = step.losses
        if not scaling:
            step.check_finite()
        return step

    # -- internals -------------------------------------------------------------------------

    def _loss(self, x_k: Any, y: Any, k: int, step: StepGradients) -> torch.Tensor:
        """L(x_k), recorded unscaled; returned scaled when a GradScaler is in use."""
        loss = self.net.depth_loss(x_k, y, k)
        if not loss.requires_grad:
            raise ValueError(
                f"the loss at depth {k} does not depend on the network: loss_fn "
                "returned a tensor detached from its input (no .item(), .detach() or "
                "torch.no_grad() inside loss_fn or the head)"
            )
        step.losses[k] = loss.detach()
        return loss if step.scale is None else loss * step.scale

    def _backprop(self, x: Any, y: Any, uses: Uses, step: StepGradients) -> None:
        """h = T: the window is the whole net, so one ordinary backward is the method."""
        net = self.net
        for t in range(net.T):
            x = net.run_block(t, x)
        loss = self._loss(x, y, net.T, step)
        params = list(dict.fromkeys([*(p for block in uses.blocks for p in block), *uses.heads[-1]]))
        if not params:
            return
        grads = dict(zip(params, torch.autograd.grad(loss, params, allow_unused=True)))
        for t, block in enumerate(uses.blocks):
            accumulate(step.blocks[t], block, [grads.pop(p, None) for p in block])
        accumulate(step.heads, uses.heads[-1], [grads.pop(p, None) for p in uses.heads[-1]])

    def _receding(self, x: Any, y: Any, uses: Uses, step: StepGradients) -> None:
        """h < T (or per-use h = T): a sliding window of h block graphs."""
        net, T = self.net, self.net.T
        targets = {c.depth: c for c in self.chains()}
        window: dict[int, Graph] = {}
        z: Any = x
        z_leaves: list[torch.Tensor] = []
        for t in range(T):
            rng = capture(z) if self.recompute else None
            out = net.run_block(t, z)
            window[t] = Graph(z_leaves, _grad_leaves(out), z if self.recompute else None, rng)
            z, z_leaves = _detached(out)
            k = t + 1
            if k not in targets:
                if self.recompute:
                    window[t].outputs = []  # free the graph now (out holds it too); a sweep rebuilds it
                    del out
                continue
            lowest, weighted, released = targets[k].lowest, targets[k].weighted, targets[k].released
            head = uses.heads[k - 1]
            if _disjoint(head, uses.blocks[t]):  # head k and block k-1 in one autograd call
                self._sweep(
                    window, [self._loss(out, y, k, step)], None, head, k, lowest, weighted, released, uses, step
                )
            else:  # a parameter tied between them: keep the head's use apart
                grads = torch.autograd.grad(self._loss(z, y, k, step), [*z_leaves, *head], allow_unused=True)
                accumulate(step.heads, head, grads[len(z_leaves) :])
                outputs, cotangents = _pairs(window[t].outputs, grads[: len(z_leaves)])
                self._sweep(window, outputs, cotangents, [], k, lowest, weighted, released, uses, step)
            for j in released:
                window.pop(j, None)
            if self.recompute:
                del out
                for graph in window.values():
                    graph.outputs = []  # the sweep freed what it used; drop what it did not reach

    def _sweep(
        self,
        window: dict[int, Graph],
        outputs: list[torch.Tensor],
        cotangents: list[torch.Tensor] | None,
        head: list[nn.Parameter],
        k: int,
        lowest: int,
        weighted: frozenset[int],
        released: frozenset[int],
        uses: Uses,
        step: StepGradients,
    ) -> None:
        """Carry ∂L(x_k) back from block k-1 down to block ``lowest`` (:func:`sweep`); with
        ``recompute`` every call frees the graph it used, and block j-1's graph is rebuilt
        (:meth:`_rebuild`) only after block j's is freed."""
        sweep(
            window,
            outputs,
            cotangents,
            head,
            k,
            lowest,
            lowest,
            weighted,
            released,
            uses.blocks,
            step,
            rebuild=(lambda j: self._rebuild(window, j)) if self.recompute else None,
        )

    def _rebuild(self, window: dict[int, Graph], j: int) -> None:
        """Recompute block j's graph from its kept input, replaying its first forward."""
        graph = window[j]
        if graph.outputs:
            return
        assert graph.rng is not None, "only a recomputing window frees graphs"
        with replaying(graph.rng, [self.net.blocks[j]]):
            graph.outputs = _grad_leaves(self.net.run_block(j, graph.input))


@dataclass
class Graph:
    """One block's graph in a window: the grad-carrying leaves of its detached input and of
    its output; with recomputation also the input itself and the generator states its forward
    drew from (``outputs`` is empty while the graph is freed)."""

    inputs: list[torch.Tensor]
    outputs: list[torch.Tensor]
    input: Any = None
    rng: RngState | None = None


def sweep(
    window: Mapping[int, Graph],
    outputs: list[torch.Tensor],
    cotangents: list[torch.Tensor] | None,
    head: list[nn.Parameter],
    top: int,
    bottom: int,
    lowest: int,
    weighted: frozenset[int],
    released: frozenset[int],
    block_params: Sequence[list[nn.Parameter]] | Mapping[int, list[nn.Parameter]],
    step: StepGradients,
    rebuild: Callable[[int], None] | None = None,
) -> list[torch.Tensor | None]:
    """Carry a chain's cotangent back from block ``top``-1 down to block ``bottom`` (≥ the
    chain's ``lowest`` block) through the graphs of ``window``; return the cotangents at the
    inputs of block ``bottom`` when the chain goes on below it (``bottom > lowest``), else [].

    ``outputs``/``cotangents`` start the first call (the loss itself when head k is fused with
    block k-1, whose ``head`` parameters then take their gradient in that call).  Each block
    in ``weighted`` adds its weight gradient (``block_params[j]``) into ``step.blocks[j]``;
    the call that uses a block in ``released`` for the last time frees its graph, the others
    are retained for later chains.  With ``rebuild`` (recomputation) every call frees the
    graph it used and ``rebuild(j - 1)`` rebuilds the next one down only then.  The sweep
    stops early when nothing below depends on the cotangent (an unused output); the returned
    list is then empty.  The engine's :class:`MPC` and the pipeline's stages both run it.
    """
    for j in range(top - 1, bottom - 1, -1):
        carry = window[j].inputs if j > lowest else []
        params = block_params[j] if j in weighted else []
        wanted = [*carry, *params, *head]
        if not wanted or not outputs:
            return []
        grads = torch.autograd.grad(
            outputs, wanted, cotangents, retain_graph=j not in released and rebuild is None, allow_unused=True
        )
        accumulate(step.blocks[j], params, grads[len(carry) : len(carry) + len(params)])
        accumulate(step.heads, head, grads[len(carry) + len(params) :])
        head, outputs = [], []
        if j == bottom:
            return list(grads[: len(carry)])
        if carry and rebuild is not None:
            window[j].outputs = []
            rebuild(j - 1)
        outputs, cotangents = _pairs(window[j - 1].outputs, grads[: len(carry)]) if carry else ([], None)
    return []


def _grad_leaves(tree: Any) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return [tree] if tree.requires_grad else []
    return [t for t in tree_leaves(tree) if isinstance(t, torch.Tensor) and t.requires_grad]


def _detached(tree: Any) -> tuple[Any, list[torch.Tensor]]:
    """``tree`` with every tensor that carries a gradient replaced by a detached leaf that
    requires grad (the next block's input), and those leaves in order."""
    if isinstance(tree, torch.Tensor):
        if not tree.requires_grad:
            return tree, []
        z = tree.detach().requires_grad_()
        return z, [z]
    leaves, spec = tree_flatten(tree)
    fresh, carried = [], []
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor) and leaf.requires_grad:
            leaf = leaf.detach().requires_grad_()
            carried.append(leaf)
        fresh.append(leaf)
    return tree_unflatten(fresh, spec), carried


def _pairs(outputs: list[torch.Tensor], cotangents) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The outputs that received a cotangent, and those cotangents (an unused output gets none)."""
    kept = [(o, c) for o, c in zip(outputs, cotangents) if c is not None]
    return [o for o, _ in kept], [c for _, c in kept]


def _disjoint(a: list[nn.Parameter], b: list[nn.Parameter]) -> bool:
    return not a or not b or not {id(p) for p in a} & {id(p) for p in b}


def _check_batch(x: Any, y: Any) -> None:
    for name, batch in (("x", x), ("y", y)):
        if samples_in(batch) == 0 and any(isinstance(t, torch.Tensor) and t.dim() > 0 for t in tree_leaves(batch)):
            raise ValueError(f"empty batch: {name} holds 0 samples (a {describe(batch)})")


def _device_of(x: Any) -> torch.device:
    first = next((t for t in tree_leaves(x) if isinstance(t, torch.Tensor)), None)
    return first.device if first is not None else torch.device("cpu")


def accumulate(grads: Grads, params, values) -> None:
    """Add each gradient of ``values`` (None: no gradient) to ``grads[p]``, out of place."""
    for p, g in zip(params, values):
        if g is None:
            continue
        grads[p] = grads[p] + g if p in grads else g


def write_grads(grads: Grads) -> None:
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
