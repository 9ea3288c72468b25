"""recede.integrations: the loss division shared by the framework integrations, and the memory print."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import recede
from recede.integrations import build_method, memory_against_bp, weighted_backward


def net(seed: int = 0) -> recede.BlockNet:
    torch.manual_seed(seed)
    blocks = [nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6), nn.Tanh()) for _ in range(4)]
    return recede.BlockNet(blocks, [nn.Linear(6, 3) for _ in range(4)], nn.functional.cross_entropy)


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)


def grads(module: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in module.parameters() if p.grad is not None]


@pytest.mark.parametrize("divisor", [1, 3, 7])
def test_divided_loss_gives_the_gradients_of_loss_over_n_bitwise(divisor: int) -> None:
    x, y = batch()
    a, b = net(), net()
    weighted_backward(recede.MPC(a, a.T), x, y, divisor)
    (b.loss(x, y) / divisor).backward()
    assert all(torch.equal(g, h) for g, h in zip(grads(a), grads(b)))


def test_a_grad_scaler_multiplies_the_divided_gradients() -> None:
    x, y = batch()
    a, b = net(), net()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    loss = weighted_backward(recede.MPC(a, 2), x, y, 4, scaler)
    weighted_backward(recede.MPC(b, 2), x, y, 4)
    assert loss == pytest.approx(float(b.loss(x, y).detach()), rel=1e-6)  # undivided, unscaled
    for g, h in zip(grads(a), grads(b)):
        torch.testing.assert_close(g, h * 2.0**10, rtol=1e-6, atol=0)


def test_non_finite_loss_raises_before_any_grad_is_written() -> None:
    a = net()
    x, y = batch()
    x[0, 0] = float("nan")
    with pytest.raises(recede.NonFiniteLossError):
        weighted_backward(recede.MPC(a, 2), x, y, 2)
    assert all(p.grad is None for p in a.parameters())


def test_bp_modified_takes_the_division_too() -> None:
    x, y = batch()
    data = torch.utils.data.TensorDataset(*[torch.cat([t] * 4) for t in batch()])
    a, b = net(), net()
    options = {"period": 5, "offset_samples": 8, "micro_batch": 4, "seed": 0}
    weighted_backward(build_method(a, 1, options, data), x, y, 2)
    weighted_backward(build_method(b, 1, options, data), x, y, 1)
    for g, h in zip(grads(a), grads(b)):
        torch.testing.assert_close(g, h / 2, rtol=1e-6, atol=1e-9)


def test_memory_against_bp_changes_nothing() -> None:
    a = net()
    x, y = batch()
    buffers = [b.clone() for b in a.buffers()]
    rng = torch.random.get_rng_state()
    saved = memory_against_bp(a, x, y, horizon=1)
    assert 0 < saved.method_bytes < saved.bp_bytes and "of BP" in str(saved)
    assert 0 < saved.method_saved_bytes < saved.bp_saved_bytes <= saved.bp_bytes
    assert all(torch.equal(b, c) for b, c in zip(a.buffers(), buffers))
    assert torch.equal(torch.random.get_rng_state(), rng) and all(p.grad is None for p in a.parameters())
