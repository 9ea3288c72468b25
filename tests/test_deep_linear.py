"""Paper A §3.3: closed-form deep-linear gradients, Theorem 3.4's exponent, the optimal horizon."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from recede.core.blocks import BlockNet
from recede.core.engine import MPC
from recede.measure.fidelity import block_gradient_vector
from recede.theory.deep_linear import (
    cosines,
    gaussian_perturbations,
    horizon_gradients,
    optimal_horizon,
    smooth_perturbations,
    theorem_exponent,
    weighted_objective,
    weights_from,
)


def linear_blocknet(W):
    blocks = []
    for w in W:
        layer = nn.Linear(w.shape[0], w.shape[0], bias=False).double()
        with torch.no_grad():
            layer.weight.copy_(w)
        blocks.append(layer)
    return BlockNet(blocks, nn.Identity(), lambda p, y: 0.5 * ((p - y) ** 2).sum() / p.shape[0])


def test_closed_form_gradients_match_the_mpc_engine():
    T, n, B = 7, 4, 32
    W = weights_from(gaussian_perturbations(T, n, scale=2.0, seed=3))
    Phi = torch.randn(n, n, dtype=torch.float64)
    X = math.sqrt(B) * torch.linalg.qr(torch.randn(B, n, dtype=torch.float64)).Q  # XᵀX/B = I
    Y = X @ Phi.T
    net = linear_blocknet(W)
    closed = dict(horizon_gradients(W, Phi))
    assert sorted(closed) == list(range(1, T + 1))
    for h in range(1, T + 1):
        net.zero_grad(set_to_none=True)
        MPC(net, h).backward(X, Y)
        assert torch.allclose(block_gradient_vector(net), closed[h].reshape(-1), atol=1e-12, rtol=1e-10)
    cos = cosines(W, Phi, [1, 4, T])
    assert cos[T] == pytest.approx(1.0, abs=1e-14) and cos[1] < cos[4] < 1


def test_smooth_exponent_is_near_three():
    """Theorem 3.4 on a depth-smooth deep linear net, T ≥ 64."""
    raw = [theorem_exponent(128, kind="smooth", seed=s) for s in range(3)]
    assert all(2.5 <= p <= 3.5 for p in raw), raw
    corrected = [theorem_exponent(T, kind="smooth", seed=s, midpoint=True) for T in (64, 128) for s in range(3)]
    assert all(2.7 <= p <= 3.3 for p in corrected), corrected
    # the raw slope rises towards 3 with depth (the discretisation bias fades)
    assert theorem_exponent(64, kind="smooth") < raw[0] < theorem_exponent(256, kind="smooth") < 3


def test_independent_gaussian_exponent_is_two_not_three():
    """Independent perturbations add like a random walk: 1 − cos² ∝ (1 − h/T)²/T."""
    slopes = [theorem_exponent(256, kind="gaussian", seed=s) for s in range(4)]
    assert 1.6 <= np.mean(slopes) <= 2.4, slopes
    # and the prefactor vanishes with depth: same 1 − h/T, deeper net, smaller 1 − cos²
    Phi = torch.eye(10, dtype=torch.float64) * 0.5
    gaps = [
        1 - cosines(weights_from(gaussian_perturbations(T, 10, seed=1)), Phi, [int(0.9 * T)])[int(0.9 * T)] ** 2
        for T in (64, 512)
    ]
    assert gaps[1] < gaps[0] / 3


def test_optimal_horizon_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(200):
        T = int(rng.integers(4, 200))
        a, b, c, lam = rng.uniform(0.01, 2), rng.uniform(0, 5), rng.uniform(0.1, 3), rng.uniform(0, 0.5) / T
        grid = np.linspace(1, T, 20001)
        h_star = optimal_horizon(T, a, lam, c)
        assert h_star == pytest.approx(
            grid[np.argmin(weighted_objective(grid, T, a, b, lam, c))], abs=2 * (T - 1) / 20000
        )
        integers = np.arange(1, T + 1)
        best = int(integers[np.argmin(weighted_objective(integers, T, a, b, lam, c))])
        assert best in (math.floor(h_star), math.ceil(h_star))
        # Paper A's printed form is the optimum for a cost linear in h/T: replace a by a/T
        assert optimal_horizon(T, a, lam, c, per_fraction=True) == pytest.approx(optimal_horizon(T, a / T, lam, c))


def test_interior_optimum_condition():
    T, a, c = 50, 1.0, 2.0
    inside = np.linspace(3 * c / (a * T**3), 3 * c * (T - 2) ** 2 / (a * T**3), 7)
    assert all(2 - 1e-9 <= optimal_horizon(T, a, lam, c) <= T - 1 + 1e-9 for lam in inside)
    assert optimal_horizon(T, a, 10.0, c) == 1.0 and optimal_horizon(T, a, 0.0, c) == T


def test_bad_input():
    W = weights_from(smooth_perturbations(8, 3))
    with pytest.raises(ValueError, match="subset"):
        cosines(W, torch.eye(3, dtype=torch.float64), [0])
    with pytest.raises(ValueError, match="Phi"):
        next(horizon_gradients(W, torch.eye(4, dtype=torch.float64)))
    with pytest.raises(ValueError, match="kind"):
        theorem_exponent(64, kind="uniform")
    with pytest.raises(ValueError, match="fewer than two"):
        theorem_exponent(8)
    with pytest.raises(ValueError):
        optimal_horizon(10, 1.0, 0.1, 0.0)
