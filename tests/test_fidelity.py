"""cos θ_h (Paper A eq. 13, Algorithm 1 lines 7–12) against a slow full-graph reference."""

import pytest
import torch

from recede import models
from recede.measure.fidelity import gradient_cosine


def reference_gradient(net, h, x, y):
    """g_h by definition: for each block t, ∇_{u_t} L(x_{min(t+h,T)}) through a whole graph."""
    T = net.T
    parts = []
    for t in range(T):
        z = x
        for s in range(min(t + h, T)):
            z = net.blocks[s](z)
        loss = net.depth_loss(z, y, min(t + h, T))
        params = net.block_parameters(t)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        parts += [(g if g is not None else torch.zeros_like(p)).reshape(-1) for p, g in zip(params, grads)]
    return torch.cat(parts)


def reference_cosine(net, h, x, y):
    a, b = reference_gradient(net, h, x, y), reference_gradient(net, net.T, x, y)
    return float(a @ b / (a.norm() * b.norm()))


def small_nets():
    torch.manual_seed(0)
    mlp = models.build("resmlp", depth=6).double()
    cnn = models.build("resnet62", widths=(2, 4), blocks_per_stage=2, in_channels=3).double()
    return [
        (mlp, torch.randn(16, 1, dtype=torch.float64), torch.randn(16, 4, dtype=torch.float64)),
        (cnn, torch.randn(8, 3, 6, 6, dtype=torch.float64), torch.randint(0, 10, (8,))),
    ]


@pytest.mark.parametrize("case", range(2))
def test_matches_slow_reference(case):
    net, x, y = small_nets()[case]
    horizons = list(range(1, net.T + 1))
    fid = gradient_cosine(net, [(x, y), (x[:4], y[:4])], horizons)
    for batch, (bx, by) in enumerate([(x, y), (x[:4], y[:4])]):
        for i, h in enumerate(horizons):
            assert fid.per_batch[batch][i] == pytest.approx(reference_cosine(net, h, bx, by), abs=1e-10)
    mean = fid.cos
    for i, h in enumerate(horizons):
        assert mean[h] == pytest.approx((fid.per_batch[0][i] + fid.per_batch[1][i]) / 2)


def test_full_horizon_is_exactly_one():
    net, x, y = small_nets()[0]
    fid = gradient_cosine(net, [(x, y)] * 3, [1, 2, net.T])
    assert abs(fid.cos[net.T] - 1.0) < 1e-12
    assert fid.cos[1] < 1 - 1e-6  # a local gradient is not the exact one on this net


def test_memory_grows_with_horizon_and_is_recorded_per_horizon():
    net, x, y = small_nets()[0]
    fid = gradient_cosine(net, [(x, y)], [1, 3, net.T])
    assert set(fid.memory) == {1, 3, net.T}
    assert fid.memory[1] < fid.memory[3] < fid.memory[net.T]
    assert gradient_cosine(net, [(x, y)], [2], measure_memory=False).memory is None


def test_restores_grads_and_buffers():
    net, x, y = small_nets()[1]
    for p in net.parameters():
        p.grad = torch.full_like(p, 7.0)
    before = [b.clone() for b in net.buffers()]
    gradient_cosine(net, [(x, y)], [1, 2])
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in net.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, net.buffers()))


def test_bad_input_is_named():
    net, x, y = small_nets()[0]
    with pytest.raises(ValueError, match="horizon"):
        gradient_cosine(net, [(x, y)], [0])
    with pytest.raises(ValueError, match="empty"):
        gradient_cosine(net, [], [1])
    with pytest.raises(ValueError, match="empty"):
        gradient_cosine(net, [(x, y)], [])
