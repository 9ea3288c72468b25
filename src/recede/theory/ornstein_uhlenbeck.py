"""Paper B §4.1: the Ornstein–Uhlenbeck toy of the bias–variance balance of the offset.

Global loss J(u) = ½ uᵀAu and local loss J_h(u) = ½ ‖u − u_h*‖²_A (Paper B eq. 8).  The
BP-modified dynamics with a_h = 1 (eq. 11) are

    dÛ = −((1−λ) A (Û − u_h*) + λ A Û) dτ + sqrt(V + λ² Ṽ) dW,        Û(0) = u_0,

so Û(𝒯) ~ N(m_0 + (1−λ) u*(𝒯), Σ_𝒯 + λ² Σ'_𝒯) (App. B.2, eq. 33) with m_0 = e^{−A𝒯} u_0,
u*(𝒯) = (I − e^{−A𝒯}) u_h*, Σ_𝒯 = ∫_0^𝒯 e^{−At} V e^{−At} dt and Σ'_𝒯 the same with Ṽ.
Minimising E[J(Û(𝒯))] over λ gives eq. 12,

    λ*(𝒯) = (m_0ᵀ A u*(𝒯) + ‖u*(𝒯)‖²_A) / (tr(Σ'_𝒯 A) + ‖u*(𝒯)‖²_A),

and the minimum of eq. 13.  Eq. 12 writes the variance as tr(Σ̃_𝒯 A) with Σ̃ carrying a
factor λ² (as printed, the formula would be implicit in λ); the derivation (eq. 34) has Σ'_𝒯
without it, which is what is computed here.  :func:`simulate_loss` checks it by an
Euler–Maruyama simulation of eq. 11.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class OUProblem:
    """A, u_0, u_h*, V, Ṽ of Paper B §4.1 (A symmetric positive definite, V and Ṽ PSD)."""

    A: np.ndarray
    u0: np.ndarray
    u_local: np.ndarray
    V: np.ndarray
    V_offset: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.u0)
        for name in ("A", "V", "V_offset"):
            m = getattr(self, name)
            if m.shape != (n, n) or not np.allclose(m, m.T):
                raise ValueError(f"{name} must be a symmetric {n}x{n} matrix, got shape {m.shape}")
        if np.linalg.eigvalsh(self.A).min() <= 0:
            raise ValueError("A must be positive definite")
        if self.u_local.shape != (n,):
            raise ValueError(f"u_local must have shape ({n},), got {self.u_local.shape}")

    def _eig(self) -> tuple[np.ndarray, np.ndarray]:
        return np.linalg.eigh(self.A)

    def propagator(self, horizon: float) -> np.ndarray:
        """e^{−A𝒯}."""
        alpha, Q = self._eig()
        return (Q * np.exp(-alpha * horizon)) @ Q.T

    def noise_covariance(self, V: np.ndarray, horizon: float) -> np.ndarray:
        """∫_0^𝒯 e^{−At} V e^{−At} dt, in A's eigenbasis."""
        alpha, Q = self._eig()
        rate = alpha[:, None] + alpha[None, :]
        return Q @ ((Q.T @ V @ Q) * -np.expm1(-rate * horizon) / rate) @ Q.T

    def terms(self, horizon: float) -> dict[str, float]:
        """The pieces of eqs. 12–13: cross = m_0ᵀA u*, bias = ‖u*‖²_A, var = tr(Σ'A), ..."""
        E = self.propagator(horizon)
        m0 = E @ self.u0
        u_star = self.u_local - E @ self.u_local
        A = self.A
        return {
            "cross": float(m0 @ A @ u_star),
            "bias": float(u_star @ A @ u_star),
            "var": float(np.trace(self.noise_covariance(self.V_offset, horizon) @ A)),
            "base_var": float(np.trace(self.noise_covariance(self.V, horizon) @ A)),
            "m0_norm": float(m0 @ A @ m0),
        }

    def optimal_lambda(self, horizon: float) -> float:
        """λ*(𝒯), Paper B eq. 12."""
        t = self.terms(horizon)
        return (t["cross"] + t["bias"]) / (t["var"] + t["bias"])

    def expected_loss(self, lam: float, horizon: float) -> float:
        """E[J(Û(𝒯))] = ½ tr((Σ + λ²Σ')A) + ½ ‖m_0 + (1−λ)u*‖²_A (App. B.2, eqs. 31–34)."""
        t = self.terms(horizon)
        mean_sq = t["m0_norm"] + 2 * (1 - lam) * t["cross"] + (1 - lam) ** 2 * t["bias"]
        return 0.5 * (t["base_var"] + lam**2 * t["var"]) + 0.5 * mean_sq

    def minimum_loss(self, horizon: float) -> float:
        """min_λ E[J(Û(𝒯))] by eq. 13: E[J(U_h(𝒯))] − (E[U_h]ᵀAu*)² / (2(tr Σ'A + ‖u*‖²_A))."""
        t = self.terms(horizon)
        return self.expected_loss(0.0, horizon) - (t["cross"] + t["bias"]) ** 2 / (2 * (t["var"] + t["bias"]))


def simulate_loss(
    problem: OUProblem, lams: np.ndarray, horizon: float, paths: int = 20_000, dt: float = 1e-3, seed: int = 0
) -> np.ndarray:
    """Monte-Carlo E[J(Û(𝒯))] of eq. 11 for each λ in ``lams`` (Euler–Maruyama, common noise)."""
    if dt <= 0 or horizon <= 0 or paths < 2:
        raise ValueError("need dt > 0, horizon > 0 and at least two paths")
    rng = np.random.default_rng(seed)
    lams = np.asarray(lams, dtype=float)
    n = len(problem.u0)
    roots_t = np.stack(
        [np.linalg.cholesky(problem.V + lam**2 * problem.V_offset + 1e-12 * np.eye(n)).T for lam in lams]
    )  # [L, n, n], transposed: noise = dw @ rootᵀ
    target = (1 - lams)[:, None] * problem.u_local[None, :]  # drift pulls towards (1−λ)u_h*
    u = np.broadcast_to(problem.u0, (len(lams), paths, n)).copy()
    step = np.eye(n) - dt * problem.A.T
    pull = dt * target @ problem.A.T  # [L, n]
    for _ in range(int(round(horizon / dt))):
        dw = rng.standard_normal((paths, n)) * np.sqrt(dt)
        u = u @ step + pull[:, None, :] + dw[None] @ roots_t
    return 0.5 * np.einsum("lpi,ij,lpj->l", u, problem.A, u) / paths


def simulated_optimal_lambda(
    problem: OUProblem, horizon: float, lams: np.ndarray | None = None, **simulation: Any
) -> float:
    """λ minimising a quadratic fitted to :func:`simulate_loss` over ``lams`` (E is quadratic in λ)."""
    lams = np.linspace(0, 1, 5) if lams is None else np.asarray(lams)
    c2, c1, _ = np.polyfit(lams, simulate_loss(problem, lams, horizon, **simulation), 2)
    return float(-c1 / (2 * c2))
