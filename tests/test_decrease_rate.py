"""Theorem C.8's r(h) ≈ cos²θ_h on a tiny case, in float64: the first small step of the rescaled
estimator decreases ln J by cos²θ_h times BP's decrease, to first order in the step."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import linear_resnet, resmlp_independent

from recede.measure.fidelity import gradient_cosine
from recede.theory.decrease_rate import decrease_rates, full_batch_run

pytestmark = pytest.mark.usefixtures("float64")


@pytest.mark.parametrize("make", [linear_resnet, resmlp_independent])
def test_first_small_step_rate_is_cos_squared(make):
    torch.manual_seed(0)
    net = make()
    width = 4 if make is linear_resnet else 5
    x = torch.randn(32, width)
    y = torch.randn(32, width) if make is linear_resnet else torch.randint(0, 3, (32,))
    before = copy.deepcopy(net.state_dict())
    runs = decrease_rates(net, x, y, list(range(1, net.T + 1)), steps=1, lr=1e-6)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())  # net left unchanged
    cos = gradient_cosine(net, [(x, y)], list(range(1, net.T + 1)), measure_memory=False).cos
    bp = runs[net.T]
    assert bp.rate(bp, 1) == 1.0
    for h in range(1, net.T):
        assert runs[h].cos[0] == pytest.approx(cos[h], abs=1e-12)
        assert runs[h].rate(bp, 1) == pytest.approx(cos[h] ** 2, abs=1e-4), h
    # plain g_h decreases J by ⟨g_h, g_T⟩, not by ⟨g_T, g_T⟩ cos²θ: it is not cos² in general
    plain = decrease_rates(net, x, y, [1], steps=1, lr=1e-6, rescale=False)
    assert abs(plain[1].rate(plain[net.T], 1) - cos[1] ** 2) > 1e-2


def test_run_records_losses_and_cosines_per_step():
    torch.manual_seed(1)
    net = linear_resnet()
    x, y = torch.randn(16, 4), torch.randn(16, 4)
    with torch.no_grad():
        J0 = float(net.loss(x, y))
    run = full_batch_run(net, x, y, 2, steps=5, lr=0.01)
    assert len(run.losses) == 6 and len(run.cos) == 5
    assert run.losses[0] == pytest.approx(J0, abs=1e-12)
    with torch.no_grad():
        assert run.losses[-1] == pytest.approx(float(net.loss(x, y)), abs=1e-12)
    assert run.losses[-1] < run.losses[0]  # the rescaled estimator is a descent direction
    assert run.mean_cos2(5) == pytest.approx(sum(c * c for c in run.cos) / 5)
    with pytest.raises(ValueError, match="steps"):
        full_batch_run(net, x, y, 2, steps=0, lr=0.01)
