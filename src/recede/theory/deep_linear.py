"""Paper A §3.3: horizon gradients of a deep linear network, Theorem 3.4, and the optimal horizon.

**The network** (Paper A eq. 12).  ``x_{t+1} = W(t) x_t`` with ``W(t) = I + W̃(t)/T``,
t = 0..T-1, and ``L(x_T) = ½‖x_T − y‖²``.  With whitened inputs (empirical covariance I) the
loss is ``½‖W_0^T − Φ‖_F²`` with ``W_a^b = W(b−1)⋯W(a)`` and Φ the input–label
cross-covariance.  The loss at depth k is ``½‖W_0^k − Φ‖_F²`` (identity heads), so the
horizon-h gradient of block t, with ``k = min(t+h, T)``, is (Paper A eq. 27, indices fixed)

    g_h(t) = (W_{t+1}^k)ᵀ (W_0^k − Φ) (W_0^t)ᵀ.

:func:`horizon_gradients` walks h = 1, 2, …, T with one batched matrix product per step
(``W_{t+1}^{t+h+1} = W(t+h) W_{t+1}^{t+h}`` for every t at once), so all cosines of a depth-T
net cost O(T²n³) flops and no autograd.

**Theorem 3.4** says ``1 − cos²θ_h = O((1 − h/T)³)`` as h/T → 1.  With m = T − h, only the
first m blocks get an inexact gradient, and block t < m misses the last m − t blocks:
``g_h(t) − g_T(t)`` is of the size of ``W_{t+h}^T − I``.  Two regimes:

* *depth-smooth* ``W̃(t) = A(t/T)``: the product is a discretised flow,
  ``‖W_{t+h}^T − I‖ ≈ (m − t)/T · ‖A(1)‖``, so ``‖g_h − g_T‖² / ‖g_T‖² ∝ (1/T)Σ_{j≤m} (j/T)²
  ≈ (m/T)³/3`` — **exponent 3**, the theorem's rate (its proof bounds the product by its
  worst case ``e^{c(1−α)} − 1``, attained when the perturbations are aligned, as here);
* *independent Gaussian* ``W̃(t)``: the m − t perturbations add like a random walk,
  ``‖W_{t+h}^T − I‖ ∝ sqrt(m − t)/T``, so the relative error is ``∝ (1/T)Σ_{j≤m} j/T² ≈
  (m/T)²/(2T)`` — **exponent 2**, with a prefactor that vanishes as 1/T.  The O(·) bound still
  holds at fixed T for small enough 1 − h/T only because the prefactor is tiny; the rate is
  not cubic.

:func:`fit_exponent` fits the slope of log(1 − cos²θ_h) against log(1 − h/T) near h = T.
Measured (n = 10, 1 − h/T ∈ [0.03, 0.1], three seeds): smooth 2.49–2.54 at T = 64, 2.65–2.70
at T = 128, 2.74–2.80 at T = 256, 2.81–2.87 at T = 1024 — rising towards 3 as the
discretisation bias fades (with the midpoint correction: 2.84–2.93 at every T); Gaussian
1.7–2.2 at every T.

**Optimal horizon** (Paper A §3.3, SPEC §4.5).  Take ``r(h) = cos²θ_h = 1 − c(1 − h/T)³``
and memory cost ``a·h + b``.  The weighted objective (O2) is

    O(h) = −r(h) + λ(a h + b) = −1 + c(1 − h/T)³ + λ(a h + b),
    O'(h) = −(3c/T)(1 − h/T)² + λa,        O''(h) = (6c/T²)(1 − h/T) ≥ 0 on h ≤ T,

so O is convex on [0, T] and its minimiser solves O'(h) = 0:

    (1 − h/T)² = aλT/(3c)   ⇒   h* = T(1 − sqrt(aλT / (3c))),

clipped to [1, T] (convexity makes the clip the constrained optimum).  It is interior,
2 ≤ h* ≤ T − 1, iff ``3c/(aT³) ≤ λ ≤ 3c(T−2)²/(aT³)``.  **Correction** (SPEC §4.5): Paper A
prints ``T(1 − sqrt(aλ/(3c)))``; that is the optimum when the cost is linear in h/T,
``a·h/T + b`` (replace a by a/T above).  :func:`optimal_horizon` uses the per-h cost and
takes ``per_fraction=True`` for the paper's form.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch


def smooth_perturbations(T: int, n: int, scale: float = 1.0, seed: int = 0) -> torch.Tensor:
    """Depth-smooth ``W̃(t) = A(t/T)``, ``A(s) = A₀ + cos(πs) A₁ + sin(2πs) A₂`` with fixed
    Gaussian ``A_i`` (entries N(0, scale²/n)); shape (T, n, n), float64."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(3, n, n, generator=g, dtype=torch.float64) * scale / math.sqrt(n)
    s = torch.arange(T, dtype=torch.float64) / T
    weights = torch.stack([torch.ones_like(s), torch.cos(math.pi * s), torch.sin(2 * math.pi * s)], dim=1)
    return torch.einsum("ti,ijk->tjk", weights, A)


def gaussian_perturbations(T: int, n: int, scale: float = 1.0, seed: int = 0) -> torch.Tensor:
    """Independent ``W̃(t)`` with entries N(0, scale²/n) (Gaussian initialisation); (T, n, n)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, n, n, generator=g, dtype=torch.float64) * scale / math.sqrt(n)


def weights_from(W_tilde: torch.Tensor) -> torch.Tensor:
    """``W(t) = I + W̃(t)/T`` for a stack of perturbations of shape (T, n, n)."""
    if W_tilde.dim() != 3 or W_tilde.shape[1] != W_tilde.shape[2]:
        raise ValueError(f"W_tilde must have shape (T, n, n), got {tuple(W_tilde.shape)}")
    T, n = W_tilde.shape[0], W_tilde.shape[1]
    return torch.eye(n, dtype=W_tilde.dtype) + W_tilde / T


def horizon_gradients(
    W: torch.Tensor, Phi: torch.Tensor, horizons: Sequence[int] | None = None
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(h, g_h)`` for h in ``horizons`` (default 1..T), ascending; ``g_h`` has shape
    (T, n, n) and ``g_h[t] = ∂L(x_{min(t+h,T)})/∂W(t)``."""
    T, n = W.shape[0], W.shape[1]
    if Phi.shape != (n, n):
        raise ValueError(f"Phi must have shape ({n}, {n}), got {tuple(Phi.shape)}")
    wanted = set(range(1, T + 1) if horizons is None else horizons)
    if not wanted or not all(1 <= h <= T for h in wanted):
        raise ValueError(f"horizons must be a non-empty subset of [1, {T}], got {sorted(wanted)}")
    eye = torch.eye(n, dtype=W.dtype)
    prefix = [eye]  # prefix[t] = W_0^t = W(t-1)⋯W(0)
    for t in range(T):
        prefix.append(W[t] @ prefix[-1])
    P = torch.stack(prefix)
    E = P - Phi  # E[k] = W_0^k − Φ = ∂L(x_k)/∂W_0^k
    Pt = P[:T].transpose(1, 2)
    k_of = torch.arange(T)
    A = eye.expand(T, n, n).clone()  # A[t] = W_{t+1}^{min(t+h,T)}
    for h in range(1, max(wanted) + 1):
        if h in wanted:
            yield h, A.transpose(1, 2) @ E[torch.clamp(k_of + h, max=T)] @ Pt
        if h < T:  # blocks t < T-h reach one block further: W_{t+1}^{t+h+1} = W(t+h) W_{t+1}^{t+h}
            A[: T - h] = W[h:T] @ A[: T - h]


def cosines(W: torch.Tensor, Phi: torch.Tensor, horizons: Sequence[int] | None = None) -> dict[int, float]:
    """cos θ_h between g_h and g_T over all blocks (Paper A eq. 13) for each h in ``horizons``
    (default 1..T)."""
    T = W.shape[0]
    wanted = set(range(1, T + 1) if horizons is None else horizons)
    by_h = {h: g.reshape(-1) for h, g in horizon_gradients(W, Phi, sorted(wanted | {T}))}
    g_T = by_h[T]
    return {h: float(by_h[h] @ g_T / (by_h[h].norm() * g_T.norm())) for h in sorted(wanted)}


def fit_exponent(
    cos: dict[int, float], T: int, window: tuple[float, float] = (0.03, 0.1), midpoint: bool = False
) -> float:
    """Slope p of ``log(1 − cos²θ_h) ≈ p·log(x_h) + const`` over ``1 − h/T`` in ``window``.

    ``x_h = 1 − h/T`` by default.  ``midpoint=True`` uses ``x_h = (T − h + ½)/T``, the
    discretisation correction of the flow argument: the error sums over j = 1..m blocks and
    ``Σ j² = ((m+½)³ − (m+½)/4)/3``, so at finite T the raw slope is biased low (≈ 2.5 at
    m ≈ 2–6) and the shift removes most of that bias; both tend to the same limit as T → ∞.
    """
    points = [
        ((T - h + (0.5 if midpoint else 0.0)) / T, 1 - c * c)
        for h, c in cos.items()
        if window[0] <= 1 - h / T <= window[1] and 1 - c * c > 0
    ]
    if len(points) < 2:
        raise ValueError(
            f"fewer than two horizons with 1 − h/T in {window} and cos θ_h < 1; "
            f"use a deeper net (T = {T}) or a wider window"
        )
    x, y = np.log([p[0] for p in points]), np.log([p[1] for p in points])
    return float(np.polyfit(x, y, 1)[0])


def theorem_exponent(
    T: int,
    n: int = 10,
    kind: str = "smooth",
    scale: float = 1.0,
    seed: int = 0,
    window: tuple[float, float] = (0.03, 0.1),
    midpoint: bool = False,
) -> float:
    """The fitted exponent of Theorem 3.4 on one deep linear net with a random target Φ
    (entries N(0, 1/n)); ``kind`` is ``"smooth"`` or ``"gaussian"`` perturbations."""
    if kind == "smooth":
        W_tilde = smooth_perturbations(T, n, scale, seed)
    elif kind == "gaussian":
        W_tilde = gaussian_perturbations(T, n, scale, seed)
    else:
        raise ValueError(f"kind must be 'smooth' or 'gaussian', got {kind!r}")
    g = torch.Generator().manual_seed(seed + 1)
    Phi = torch.randn(n, n, generator=g, dtype=torch.float64) / math.sqrt(n)
    hs = [h for h in range(1, T + 1) if window[0] <= 1 - h / T <= window[1]] + [T]
    return fit_exponent(cosines(weights_from(W_tilde), Phi, hs), T, window, midpoint)


def weighted_objective(h: float | np.ndarray, T: int, a: float, b: float, lam: float, c: float) -> float | np.ndarray:
    """``−r(h) + λ(a h + b)`` with ``r(h) = 1 − c(1 − h/T)³`` (Paper A §3.3's example)."""
    return -(1 - c * (1 - np.asarray(h) / T) ** 3) + lam * (a * np.asarray(h) + b)


def optimal_horizon(T: int, a: float, lam: float, c: float, per_fraction: bool = False) -> float:
    """The minimiser over [1, T] of :func:`weighted_objective`: ``T(1 − sqrt(aλT/(3c)))``
    clipped to [1, T]; ``per_fraction=True`` for cost ``a·h/T + b`` (Paper A's printed form)."""
    if T < 1 or a < 0 or lam < 0 or c <= 0:
        raise ValueError(f"need T >= 1, a >= 0, lam >= 0, c > 0; got T={T}, a={a}, lam={lam}, c={c}")
    scale = 1.0 if per_fraction else T
    return float(min(max(T * (1 - math.sqrt(a * lam * scale / (3 * c))), 1.0), float(T)))
