"""Horizon selection: Paper A §4, Algorithm 1 and Table D3, with SPEC §4's corrections.

Given cos θ_h and M(h) measured on a subset H of horizons (:mod:`recede.measure.fidelity`):

1. fit ``cos θ̂_h`` by a degree-3 polynomial and ``M̂(h)`` by a degree-1 polynomial over H
   (Paper A eqs. 15–16; the degree drops to ``len(H) - 1`` when H has fewer points);
2. ``r̂(h) = cos² θ̂_h`` (eq. 14) — the fitted cosine is clipped to [0, 1] first, since a
   negative cosine does not decrease the loss and a cosine above 1 does not exist;
3. memory cost ``C(M) = c·M/M0`` (``"linear"``) or ``c·⌈M/M0⌉`` (``"ladder"``); by default
   ``M0 = max_h M(h)`` for linear and ``0.3·max_h M(h)`` for ladder (Table D3 footnote);
4. brute force over h = 1..T:

   * O1 ``"constraint"`` (eq. 17): the smallest memory cost subject to ``r̂(h) ≥ 1 − ε``.
     **Correction** (SPEC §4): eq. 17 prints "max C"; the text and Algorithm 1 minimise.
     Ties in cost (the ladder's steps) go to the larger r̂, then the smaller h.  If no h is
     feasible, :func:`solve` reports ``feasible=False`` and falls back to h = T, and
     :func:`choose` also emits an :class:`InfeasibleWarning`.
   * O2 ``"weighted"`` (eq. 18): ``argmin_h −r̂(h) + λ·C(M̂(h))``.  This λ, the O2 weight on
     the memory cost, is unrelated to BP-modified's λ (docs/glossary.md): it is the keyword
     ``weight`` (flag ``--weight``).  The shape of C is ``cost_shape`` (``--cost-shape``).
     **Correction** (SPEC §4): eq. 18 prints "max"; Algorithm 1 line 17 takes argmin.

:func:`relative_scores` is eq. 19's ``Rel(a)`` with infeasible runs scored 1.5 (Fig. 5).
:func:`select_horizon` runs the whole of Algorithm 1 on a network, and ``recede select`` is
its command line.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from recede.core.blocks import BlockNet
from recede.measure.fidelity import Fidelity, gradient_cosine

OBJECTIVES = ("constraint", "weighted")
COST_SHAPES = ("linear", "ladder")
LADDER_M0_FRACTION = 0.3
INFEASIBLE_REL = 1.5


class InfeasibleWarning(UserWarning):
    """No horizon meets O1's accuracy constraint; the selection fell back to h = T."""


def _degree(n_points: int, degree: int) -> int:
    return min(degree, n_points - 1)


def fit_cos(cos: Mapping[int, float]) -> np.poly1d:
    """``cos θ̂_h``: degree-3 least-squares polynomial in h (Paper A eq. 15)."""
    hs = sorted(cos)
    return np.poly1d(np.polyfit(hs, [cos[h] for h in hs], _degree(len(hs), 3)))


def fit_memory(mem: Mapping[int, float]) -> np.poly1d:
    """``M̂(h)``: degree-1 least-squares polynomial in h (Paper A eq. 16)."""
    hs = sorted(mem)
    return np.poly1d(np.polyfit(hs, [float(mem[h]) for h in hs], _degree(len(hs), 1)))


def default_M0(mem: Mapping[int, float], cost_shape: str) -> float:
    """Table D3: ``max_h M(h)`` for the linear cost, ``0.3·max_h M(h)`` for the ladder."""
    peak = max(float(m) for m in mem.values())
    return peak if cost_shape == "linear" else LADDER_M0_FRACTION * peak


def memory_cost(memory: np.ndarray | float, cost_shape: str, c: float, M0: float) -> np.ndarray:
    """The memory cost ``C(M) = c·M/M0`` (``cost="linear"``) or ``c·⌈M/M0⌉`` (``"ladder"``),
    Paper A §4 (not the time model of :mod:`recede.measure.cost`)."""
    ratio = np.asarray(memory, dtype=float) / M0
    if cost_shape == "linear":
        return c * ratio
    # a ratio that is an integer up to rounding (M = k·M0 exactly) needs k devices, not k+1
    return c * np.ceil(ratio - 1e-9)


cost_of = memory_cost  # the old name (recede.reproduce.paper_a_selection still uses it)


def objective_value(
    r: float,
    memory: float,
    objective: str,
    eps: float | None = None,
    weight: float | None = None,
    cost_shape: str = "linear",
    c: float = 1.0,
    M0: float = 1.0,
) -> float | None:
    """O(a) of a run with loss-decrease rate ``r`` (eq. 14) and memory ``memory``.

    O1: the memory cost ``C(M)``, or None when ``r < 1 − ε`` (infeasible).  O2: ``−r + λ·C(M)``
    (``weight`` = λ, O2's weight).
    """
    _check_objective(objective, eps, weight, cost_shape, c, M0)
    C = float(memory_cost(memory, cost_shape, c, M0))
    if objective == "constraint":
        assert eps is not None  # _check_objective: the constraint objective needs eps
        return C if r >= 1 - eps else None
    assert weight is not None  # _check_objective: the trade-off objective needs a weight
    return -r + weight * C


def relative_scores(values: Mapping[str, float | None]) -> dict[str, float]:
    """``Rel(a) = (O(a) − min O) / (max O − min O)`` (Paper A eq. 19); infeasible (None) → 1.5."""
    feasible = [v for v in values.values() if v is not None]
    if not feasible:
        return {a: INFEASIBLE_REL for a in values}
    low, high = min(feasible), max(feasible)
    span = high - low
    return {a: INFEASIBLE_REL if v is None else ((v - low) / span if span > 0 else 0.0) for a, v in values.items()}


@dataclass(frozen=True)
class Choice:
    """The fitted curves over h = 1..T and the selected horizon.

    ``objective`` is C(M̂) for O1 (``inf`` where the constraint fails) and ``−r̂ + λC`` for O2.
    """

    h: int
    feasible: bool
    objective_name: str
    M0: float
    cos_fit: np.poly1d
    memory_fit: np.poly1d
    horizons: np.ndarray
    cos_hat: np.ndarray
    r_hat: np.ndarray
    memory_hat: np.ndarray
    cost: np.ndarray
    objective: np.ndarray

    @property
    def message(self) -> str:
        if self.feasible:
            return f"selected horizon h* = {self.h} ({self.objective_name})"
        return (
            f"no horizon meets the accuracy constraint r̂(h) ≥ 1 − ε (best r̂ = "
            f"{self.r_hat.max():.4g} at h = {int(self.horizons[self.r_hat.argmax()])}); "
            f"falling back to h = T = {self.h}"
        )

    def table(
        self, measured_cos: Mapping[int, float] | None = None, measured_memory: Mapping[int, float] | None = None
    ) -> list[dict]:
        """One row per h with the fitted values (and the measured ones where given)."""
        rows = []
        for i, h in enumerate(self.horizons.tolist()):
            row = {"h": h}
            if measured_cos is not None:
                row["cos (measured)"] = measured_cos.get(h)
            row |= {"cos (fit)": float(self.cos_hat[i]), "r̂": float(self.r_hat[i])}
            if measured_memory is not None:
                row["M (measured)"] = measured_memory.get(h)
            row |= {
                "M̂": float(self.memory_hat[i]),
                "C": float(self.cost[i]),
                "objective": float(self.objective[i]) if math.isfinite(self.objective[i]) else None,
                "selected": "←" if h == self.h else "",
            }
            rows.append(row)
        return rows


def _check_objective(
    objective: str, eps: float | None, weight: float | None, cost_shape: str, c: float, M0: float | None
) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES} (O1, O2), got {objective!r}")
    if cost_shape not in COST_SHAPES:
        raise ValueError(f"cost_shape must be one of {COST_SHAPES}, got {cost_shape!r}")
    if objective == "constraint" and (eps is None or not 0 <= eps <= 1):
        raise ValueError(f"objective 'constraint' (O1) needs eps in [0, 1], got {eps!r}")
    if objective == "weighted" and (weight is None or weight < 0):
        raise ValueError(f"objective 'weighted' (O2) needs weight >= 0, got {weight!r}")
    if c <= 0:
        raise ValueError(f"unit cost c must be positive, got {c}")
    if M0 is not None and M0 <= 0:
        raise ValueError(f"M0 (one device's memory) must be positive, got {M0}")


def _check_points(name: str, points: Mapping[int, float], T: int) -> None:
    if not points:
        raise ValueError(f"{name} is empty; measure at least one horizon")
    bad = [h for h in points if not (isinstance(h, (int, np.integer)) and 1 <= h <= T)]
    if bad:
        raise ValueError(f"{name} has horizons outside [1, {T}]: {bad}")
    if not all(math.isfinite(float(v)) for v in points.values()):
        raise ValueError(f"{name} has non-finite values: {dict(points)}")


def solve(
    cos: Mapping[int, float],
    mem: Mapping[int, float],
    T: int,
    objective: str,
    eps: float | None = None,
    weight: float | None = None,
    cost_shape: str = "linear",
    c: float = 1.0,
    M0: float | None = None,
) -> Choice:
    """Fit, then brute-force the objective over h = 1..T (Algorithm 1 lines 4–17)."""
    if not isinstance(T, int) or T < 1:
        raise ValueError(f"T must be a positive integer, got {T!r}")
    _check_objective(objective, eps, weight, cost_shape, c, M0)
    _check_points("cos", cos, T)
    _check_points("mem", mem, T)
    M0 = default_M0(mem, cost_shape) if M0 is None else float(M0)
    cos_fit, memory_fit = fit_cos(cos), fit_memory(mem)
    hs = np.arange(1, T + 1)
    cos_hat = cos_fit(hs)
    r_hat = np.clip(cos_hat, 0.0, 1.0) ** 2
    memory_hat = memory_fit(hs)
    C = memory_cost(memory_hat, cost_shape, c, M0)
    if objective == "constraint":
        assert eps is not None  # _check_objective: the constraint objective needs eps
        feasible_mask = r_hat >= 1 - eps
        value = np.where(feasible_mask, C, np.inf)
        feasible = bool(feasible_mask.any())
        if feasible:
            order = np.lexsort((hs, -r_hat, value))  # cost, then larger r̂, then smaller h
            h = int(hs[order[0]])
        else:
            h = T
    else:
        value = -r_hat + weight * C
        feasible = True
        h = int(hs[np.argmin(value)])
    return Choice(h, feasible, objective, M0, cos_fit, memory_fit, hs, cos_hat, r_hat, memory_hat, C, value)


def choose(
    cos: Mapping[int, float],
    mem: Mapping[int, float],
    T: int,
    objective: str,
    eps: float | None = None,
    weight: float | None = None,
    cost_shape: str = "linear",
    c: float = 1.0,
    M0: float | None = None,
) -> int:
    """ĥ* of Algorithm 1: :func:`solve`'s horizon.  An infeasible O1 warns
    (:class:`InfeasibleWarning`) and returns T; call :func:`solve` to get the flag instead."""
    choice = solve(cos, mem, T, objective, eps, weight, cost_shape, c, M0)
    if not choice.feasible:
        warnings.warn(choice.message, InfeasibleWarning, stacklevel=2)
    return choice.h


def default_horizons(T: int, n: int = 6) -> list[int]:
    """``n`` horizons spread evenly over [1, T] (always 1 and T): the subset H."""
    return sorted({int(round(v)) for v in np.linspace(1, T, min(n, T))})


@dataclass(frozen=True)
class Selection:
    """Algorithm 1's result: ĥ*, whether O1 was feasible, the measurements and the fits."""

    h: int
    feasible: bool
    fidelity: Fidelity
    choice: Choice

    def table(self) -> list[dict]:
        return self.choice.table(self.fidelity.cos, self.fidelity.memory)

    def as_dict(self) -> dict:
        ch = self.choice
        return {
            "h": self.h,
            "feasible": self.feasible,
            "message": ch.message,
            "objective": ch.objective_name,
            "M0": ch.M0,
            "cos_fit": ch.cos_fit.coeffs.tolist(),
            "memory_fit": ch.memory_fit.coeffs.tolist(),
            "measured": self.fidelity.as_dict(),
            "table": self.table(),
        }


def select_horizon(
    net: BlockNet,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    horizons: Sequence[int] | None = None,
    objective: str = "weighted",
    eps: float | None = None,
    weight: float | None = None,
    cost_shape: str = "linear",
    c: float = 1.0,
    M0: float | None = None,
) -> Selection:
    """Paper A Algorithm 1: measure cos θ_h and M(h) on ``horizons`` (default
    :func:`default_horizons`), fit, and pick ĥ* for the objective and cost."""
    _check_objective(objective, eps, weight, cost_shape, c, M0)
    hs = default_horizons(net.T) if horizons is None else list(horizons)
    fidelity = gradient_cosine(net, batches, hs)
    assert fidelity.memory is not None  # gradient_cosine measures memory by default
    choice = solve(fidelity.cos, fidelity.memory, net.T, objective, eps, weight, cost_shape, c, M0)
    return Selection(choice.h, choice.feasible, fidelity, choice)


# -- command line ----------------------------------------------------------------------------
