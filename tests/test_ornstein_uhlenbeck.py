"""Paper B §4.1: λ*(𝒯) of eq. 12 and the minimum of eq. 13 against a simulation of eq. 11."""

from __future__ import annotations

import numpy as np
import pytest

from recede.theory.ornstein_uhlenbeck import OUProblem, simulate_loss, simulated_optimal_lambda


def problem(offset_noise: float) -> OUProblem:
    A = np.array([[1.5, 0.3], [0.3, 0.8]])
    return OUProblem(
        A=A,
        u0=np.array([1.0, -0.5]),
        u_local=np.array([1.2, 0.8]),
        V=0.2 * np.eye(2),
        V_offset=offset_noise * np.array([[1.0, 0.2], [0.2, 0.5]]),
    )


@pytest.mark.parametrize("offset_noise", [0.5, 4.0])
def test_closed_form_lambda_matches_simulation(offset_noise):
    p, horizon = problem(offset_noise), 2.0
    lam = p.optimal_lambda(horizon)
    assert 0 < lam < 1  # both λ = 0 (plain local loss) and λ = 1 (unbiased offset) are suboptimal
    simulated = simulated_optimal_lambda(p, horizon, paths=20_000, dt=5e-3, seed=1)
    assert simulated == pytest.approx(lam, abs=0.04)


def test_expected_loss_and_eq_13_match_simulation():
    p, horizon = problem(1.0), 2.0
    lams = np.array([0.0, p.optimal_lambda(horizon), 1.0])
    simulated = simulate_loss(p, lams, horizon, paths=20_000, dt=5e-3, seed=2)
    exact = np.array([p.expected_loss(lam, horizon) for lam in lams])
    np.testing.assert_allclose(simulated, exact, rtol=0.04)
    assert p.minimum_loss(horizon) == pytest.approx(exact[1], rel=1e-12)
    assert exact[1] < exact[0] and exact[1] < exact[2]


def test_more_offset_noise_lowers_lambda():
    lams = [problem(noise).optimal_lambda(3.0) for noise in (0.1, 1.0, 10.0)]
    assert lams[0] > lams[1] > lams[2]


def test_bad_problem_is_named():
    with pytest.raises(ValueError, match="positive definite"):
        OUProblem(A=-np.eye(2), u0=np.zeros(2), u_local=np.zeros(2), V=np.eye(2), V_offset=np.eye(2))
