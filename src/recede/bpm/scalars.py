"""The scalars a, λ of the BP-modified local loss (Paper B eqs. 5, 16–19; SPEC §5).

Per block, :class:`recede.BPModified` applies ``ĝ = a g_h + λ Δ`` with ``Δ = ḡ_T − a ḡ_h``
measured on B' samples every K steps.  This module chooses a and λ from the refresh's
per-block moments (:class:`BlockMoments`).

``paper`` — Paper B as printed, with SPEC §5's corrections.  It minimises the one-step error

    E(a, λ) = (1−λ)² ‖a ḡ_h − ḡ_T‖² + a² tr C_h / B + λ² K (a² tr C_h + tr C_T − a tr C_{h,T}) / B'

(eq. 16 with App. C's factor K) by alternating the exact minimisers λ* (eq. 18) and a*
(eqs. 17, 19, with the ½ that eq. 19 omits) from several starts.

``robust`` — the default.  E is the error of *one* step, but the offset is held for K steps.
Summed over a period the bias (1−λ)(aḡ_h − ḡ_T) and the offset's sampling error repeat K times
and add coherently, while the local gradient's sampling noise averages out, so the error of
the period's mean update against the period's mean true gradient is

    E_K(a, λ) = (1−λ)² ‖a ḡ_h − ḡ_T‖² + a² tr C_h / (K B) + λ² (a² tr C_h + tr C_T − a tr C_{h,T}) / B'

for gradients that do not move within the period.  Paper B's E weights the offset's noise
K-fold but not the bias, so at K = one epoch it buys bias reduction with a (unbounded, even
negative) a rather than with the offset.  The robust rule keeps a = 1: the local method's own
step is left as it is (a scales a block's step against its head's and against the learning
rate tuned for the local method; a < 0 makes the block ascend the loss its head descends), and
a_bias = ḡ_h·ḡ_T/‖ḡ_h‖² is a ratio of noisy estimates without bounded variance where ‖ḡ_h‖
is small.  With a = 1 the offset Δ = d̂ = ḡ_T − ḡ_h estimates the local method's bias d, and
with d_k the bias at step k of the period (it moves: the offset goes stale, and the offset
itself moves the weights),

    E_K(λ) − E_K(0) = −2λ P + λ² ‖d̂‖²,     P = mean_k d_k·d̂,

so the best λ is λ* = P/‖d̂‖², and every λ in [0, 2λ*] is no worse than the local method in this
error, for a given course d_0 … d_{K−1}.  Applying the offset changes that course, which the
evidence below (measured mostly on periods run with λ = 0) does not see; docs/paper-b.md has a
task where the rule then trained worse than the local method.  At
the period's start E[d_0·d̂] = ‖d_0‖², estimated without bias by D = ‖d̂‖² − V/B' (V = tr C_h +
tr C_T − tr C_{h,T}, the per-sample variance of g_T − g_h), which gives

    λ_start = D₊ / ‖d̂‖² = (1 − V / (B' ‖d̂‖²))₊,

the positive-part James–Stein shrinkage of the measured offset (K no longer appears: bias and
offset error add up alike).  At the period's end the value is not known in advance; the rule
uses what the last offset Δ_{r−1} was still worth at the end of *its* period, measured on this
refresh's independent samples: c = d̂_r·Δ_{r−1}/‖Δ_{r−1}‖², unbiased for d_r·Δ_{r−1}/‖Δ_{r−1}‖²,
taken at a lower confidence bound that holds for all blocks of the refresh together with
probability 97.5 % (Student's t over the n micro-batch projections (m_T − m_h)·Δ_{r−1},
Bonferroni over the blocks; two micro-batches rarely suffice).  If the projection moves monotonically within
a period, λ* lies
between its start and end values, so

    λ = min(λ_start, max(0, c_lower), ‖ḡ_h‖/‖d̂‖, max(2 λ_{r−1}, 0.1 ‖ḡ_h‖/‖d̂‖))
                                                     (λ = 0 at the first refresh, with nothing to test)

does not exceed λ* and hence E_K(λ) ≤ E_K(0): the modified update is never further from the
true gradient over a period than the local method's.  Where the offset goes stale or overshoots
within a period (c ≤ 0) or is lost in its noise (D ≤ 0), λ = 0 and the block trains as the
local method does.  The last term bounds the step, which E_K does not see: the learning rate
was chosen for the local method's steps, and a step along a true gradient much longer than the
local one can diverge where the local method does not (M2 at lr 0.03: after an early blow-up
‖d̂‖ ≈ 1000 ‖ḡ_h‖ on two blocks, λ_start ≈ 0.96 and the run diverged; BP itself diverges
there).  With λ ‖d̂‖ ≤ ‖ḡ_h‖ the offset at most doubles a block's mean step; lowering λ keeps it
in [0, λ*].

The last term is a trust region for the evidence.  c_lower was measured on a period run with
λ_{r−1}, and an applied offset changes the bias's course, which E_K takes as given: an offset
held for a one-epoch period can overshoot (the residual MLP on the spirals, docs/paper-b.md:
c_lower = 0.50 on a period run with λ = 0, then −0.60 after one period at λ = 0.32, and
training fell 24 points behind FF on one seed).  So λ at most doubles from one refresh to the
next, and a block whose offset was off starts with a probe, an offset at most a tenth as long
as its local gradient; the next refresh's c_lower then tests the offset under its own action.

``bias`` — Paper B Table 3's ablation: λ = 0, a = a_bias.  ``fixed`` — the caller's a, λ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

RULES = ("robust", "paper", "bias", "fixed")


@dataclass
class BlockMoments:
    """Per-block scalars of one refresh (tensors of shape [n_blocks], float64).

    ``hh = ‖ḡ_h‖²``, ``ht = ḡ_h·ḡ_T``, ``tt = ‖ḡ_T‖²``; ``tr_h, tr_t, tr_ht`` are the
    per-sample covariance traces tr C_h, tr C_T and tr C_{h,T} (two-sided).
    """

    hh: torch.Tensor
    ht: torch.Tensor
    tt: torch.Tensor
    tr_h: torch.Tensor
    tr_t: torch.Tensor
    tr_ht: torch.Tensor

    @property
    def offset_sq(self) -> torch.Tensor:
        """‖ḡ_T − ḡ_h‖², the squared norm of the measured bias d̂ of the local gradient."""
        return (self.hh - 2 * self.ht + self.tt).clamp_min(0)

    @property
    def offset_var(self) -> torch.Tensor:
        """V = tr Cov(g_T − g_h) = tr C_h + tr C_T − tr C_{h,T}, per sample."""
        return (self.tr_h + self.tr_t - self.tr_ht).clamp_min(0)


# -- Paper B ---------------------------------------------------------------------------------


def bias_term(a: torch.Tensor, lam: torch.Tensor, m: BlockMoments) -> torch.Tensor:
    """(1−λ)² ‖a ḡ_h − ḡ_T‖², the squared bias of ĝ (Paper B eq. 16, first term)."""
    return (1 - lam) ** 2 * (a * a * m.hh - 2 * a * m.ht + m.tt)


def variance_term(a: torch.Tensor, lam: torch.Tensor, m: BlockMoments, B: int, B_prime: int, K: int) -> torch.Tensor:
    """a² tr C_h / B + λ² K tr C̃_h / B' (Paper B eq. 16 with App. C's factor K)."""
    offset_var = (a * a * m.tr_h + m.tr_t - a * m.tr_ht).clamp_min(0)
    return a * a * m.tr_h / B + lam * lam * K * offset_var / B_prime


def one_step_error(a: torch.Tensor, lam: torch.Tensor, m: BlockMoments, B: int, B_prime: int, K: int) -> torch.Tensor:
    """E(a, λ) of SPEC §5 (Paper B eq. 16 with the factor K), per block."""
    return bias_term(a, lam, m) + variance_term(a, lam, m, B, B_prime, K)


def paper_scalars(
    m: BlockMoments, B: int, B_prime: int, K: int, tol: float = 1e-12, max_iter: int = 10_000
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise E(a, λ) per block by alternating the exact minimisers (Paper B Remark 4.2).

    λ*(a) = Bias/(Bias + Var) (eq. 18) and a*(λ) = (b a_bias + d a_var)/(b + d) (eqs. 17, 19,
    with the ½ of SPEC §5's correction), until neither moves by more than ``tol``.  E is convex
    in each variable but not jointly, so the alternation can stop in a poorer local minimum:
    it is run from a*(λ) for λ = 0, ½, 1 and from a = 1, and the best end point is returned.
    A block with no local signal (‖ḡ_h‖ = tr C_h = 0) keeps a = 1.
    """
    starts = [torch.ones_like(m.hh)] + [
        _a_star(torch.full_like(m.hh, v), torch.ones_like(m.hh), m, B, B_prime, K) for v in (0.0, 0.5, 1.0)
    ]
    best_a, best_lam = _alternate(starts[0], m, B, B_prime, K, tol, max_iter)
    best_e = one_step_error(best_a, best_lam, m, B, B_prime, K)
    for a in starts[1:]:
        a, lam = _alternate(a, m, B, B_prime, K, tol, max_iter)
        e = one_step_error(a, lam, m, B, B_prime, K)
        better = e < best_e
        best_a, best_lam = torch.where(better, a, best_a), torch.where(better, lam, best_lam)
        best_e = torch.minimum(e, best_e)
    return best_a, best_lam


def _lam_star(a: torch.Tensor, lam: torch.Tensor, m: BlockMoments, B_prime: int, K: int) -> torch.Tensor:
    """λ*(a) = Bias / (Bias + Var), Paper B eq. 18 with Var = K tr C̃_h / B'; else ``lam``."""
    bias = a * a * m.hh - 2 * a * m.ht + m.tt
    var = K * (a * a * m.tr_h + m.tr_t - a * m.tr_ht).clamp_min(0) / B_prime
    return torch.where(bias + var > 0, bias / (bias + var).clamp_min(1e-300), lam)


def _a_star(lam: torch.Tensor, a: torch.Tensor, m: BlockMoments, B: int, B_prime: int, K: int) -> torch.Tensor:
    """a*(λ) = (b a_bias + d a_var) / (b + d), Paper B eqs. 17, 19 (with the ½); else ``a``."""
    b = (1 - lam) ** 2 * m.hh
    d = (1 / B + lam**2 * K / B_prime) * m.tr_h
    numerator = (1 - lam) ** 2 * m.ht + lam**2 * K * m.tr_ht / (2 * B_prime)
    return torch.where(b + d > 0, numerator / (b + d).clamp_min(1e-300), a)


def _alternate(
    a: torch.Tensor, m: BlockMoments, B: int, B_prime: int, K: int, tol: float, max_iter: int
) -> tuple[torch.Tensor, torch.Tensor]:
    lam = torch.zeros_like(a)
    for _ in range(max_iter):
        new_lam = _lam_star(a, lam, m, B_prime, K)
        new_a = _a_star(new_lam, a, m, B, B_prime, K)
        moved = torch.maximum((new_a - a).abs() / (1 + a.abs()), (new_lam - lam).abs())
        a, lam = new_a, new_lam
        if bool((moved <= tol).all()):
            break
    return a, lam


def bias_scalars(m: BlockMoments) -> tuple[torch.Tensor, torch.Tensor]:
    """Paper B Table 3's ablation: λ = 0, a = a_bias = ḡ_h·ḡ_T / ‖ḡ_h‖² (1 where ḡ_h = 0)."""
    a = torch.where(m.hh > 0, m.ht / m.hh.clamp_min(1e-300), torch.ones_like(m.hh))
    return a, torch.zeros_like(m.hh)


# -- robust ----------------------------------------------------------------------------------


def offset_signal(m: BlockMoments, B_prime: int) -> torch.Tensor:
    """D = ‖d̂‖² − V / B', an unbiased estimate of ‖ḡ_T − ḡ_h‖² of the population (may be < 0)."""
    return m.offset_sq - m.offset_var / B_prime


def fresh_lambda(m: BlockMoments, B_prime: int) -> torch.Tensor:
    """λ_fresh = D₊ / ‖d̂‖² = (1 − V / (B' ‖d̂‖²))₊, the positive-part James–Stein factor."""
    d2 = m.offset_sq
    return torch.where(d2 > 0, offset_signal(m, B_prime).clamp_min(0) / d2.clamp_min(1e-300), torch.zeros_like(d2))


def end_coefficient(
    cross: torch.Tensor, norm_sq: torch.Tensor, se: torch.Tensor, n: int, alpha: float = 0.025
) -> torch.Tensor:
    """A lower confidence bound on c = d_r·Δ / ‖Δ‖², the best multiplier of the last offset Δ at
    the end of its period, per block, from this refresh's n independent micro-batches.

    ``cross`` is Δ·d̂_r (unbiased for Δ·d_r), ``se`` its standard error (the sample standard
    deviation of the n micro-batch projections (m_T − m_h)·Δ over √n), so the bound is
    ``(cross − t se) / ‖Δ‖²`` with t Student's quantile at n − 1 degrees of freedom and level
    1 − alpha / (number of blocks): all blocks' bounds hold together with probability ≥ 1 − alpha
    (Bonferroni).  For one block at n = 2 micro-batches t = 12.7; for 8 blocks at n = 40, 2.9.
    −∞ where Δ = 0.
    """
    from scipy.stats import t as student

    t = float(student.ppf(1 - alpha / max(len(cross), 1), n - 1))
    bound = (cross - t * se) / norm_sq.clamp_min(1e-300)
    return torch.where(norm_sq > 0, bound, torch.full_like(bound, -torch.inf))


def step_cap(m: BlockMoments) -> torch.Tensor:
    """‖ḡ_h‖ / ‖d̂‖: the largest λ whose offset λ d̂ is no longer than the local gradient."""
    return torch.where(m.offset_sq > 0, (m.hh / m.offset_sq.clamp_min(1e-300)).sqrt(), torch.zeros_like(m.hh))


GROWTH = 2.0  # λ may at most double from one refresh to the next
PROBE = 0.1  # a block whose λ was 0 starts with an offset ≤ PROBE × its local gradient's length


def robust_scalars(
    m: BlockMoments, B_prime: int, end: torch.Tensor | None, previous: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """a = 1, λ = min(λ_fresh, max(0, c_end), cap, max(GROWTH λ_{r−1}, PROBE cap)) with
    cap = ‖ḡ_h‖/‖d̂‖ (module docstring); λ = 0 at the first refresh.

    ``end`` is :func:`end_coefficient` of the last offset (None at the first refresh);
    ``previous`` the blocks' λ of the last refresh (zeros if None).
    """
    if end is None:
        return torch.ones_like(m.hh), torch.zeros_like(m.hh)
    cap = step_cap(m)
    previous = torch.zeros_like(m.hh) if previous is None else previous.to(m.hh)
    trust = torch.maximum(GROWTH * previous, PROBE * cap)
    lam = torch.minimum(torch.minimum(fresh_lambda(m, B_prime), end.clamp_min(0)), torch.minimum(cap, trust))
    return torch.ones_like(m.hh), lam
