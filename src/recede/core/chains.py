"""The horizon rule, stated once: which losses each block learns from, and the chains a step runs.

SPEC §2 (Paper A eq. 9, Remark 3.2): with T blocks and horizon h, block t (0-based) learns from

    L(x_{min(t+h, T)}),        h ∈ {1, …, T};

with LoCo's double rule (Paper A eq. 20) it also learns from L(x_{min(t+h-1, T)}).  A step
evaluates the loss of every depth k that some block learns from and carries its cotangent
∂L(x_k)/∂x_k down to the lowest such block: a *chain*.  Every reader of the rule takes it from
here: :class:`recede.MPC` (which chains it runs, where weight gradients are taken, when a block
graph is freed), the pipeline's :class:`~recede.parallel.pipeline.plan.Plan`, the time model
:func:`recede.measure.cost.passes` and BP-modified (which blocks are already exact).
"""

from __future__ import annotations

from dataclasses import dataclass


def targets(t: int, T: int, horizon: int, double: bool = False) -> tuple[int, ...]:
    """The depths k whose loss L(x_k) block ``t`` learns from, increasing (SPEC §2)."""
    if not 0 <= t < T:
        raise ValueError(f"block {t} is not one of the T = {T} blocks")
    depths = {min(t + horizon, T)} | ({min(t + horizon - 1, T)} if double else set())
    return tuple(sorted(depths))


def exact(t: int, T: int, horizon: int, double: bool = False) -> bool:
    """True when block ``t`` learns from L(x_T) alone, i.e. receives back-propagation's g_T."""
    return targets(t, T, horizon, double) == (T,)


@dataclass(frozen=True)
class Chain:
    """The cotangent of depth ``depth``, carried back to block ``lowest``.

    ``weighted``: the blocks that learn from L(x_depth) and take their weight gradient from
    this chain (``lowest`` is the smallest).  ``released``: the blocks whose graph no later
    chain passes through, so this chain frees it.
    """

    depth: int
    lowest: int
    weighted: frozenset[int]
    released: frozenset[int] = frozenset()


def chains(T: int, horizon: int, double: bool = False) -> list[Chain]:
    """The chains of one horizon step, by increasing depth (the order :class:`recede.MPC` runs
    them): one per depth some block learns from, down to the lowest block that learns from it."""
    learners: dict[int, set[int]] = {}
    for t in range(T):
        for k in targets(t, T, horizon, double):
            learners.setdefault(k, set()).add(t)
    spans = sorted((k, min(blocks)) for k, blocks in learners.items())
    last = {j: k for k, lowest in spans for j in range(lowest, k)}  # the deepest chain through j
    return [
        Chain(k, lowest, frozenset(learners[k]), frozenset(j for j in range(lowest, k) if last[j] == k))
        for k, lowest in spans
    ]
