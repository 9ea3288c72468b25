"""Mixed precision: the user's torch.autocast and torch.amp.GradScaler through every method.

A GradScaler multiplies every loss by a power of two, which is exact in floating point, so
without autocast the scaled gradients must be exactly scale × the unscaled ones, for every
horizon, for checkpointed BP (selective too) and for BP-modified (offsets included).  Under fp16 autocast an
overflow must skip the step as ``scaler.scale(loss).backward(); scaler.step(opt)`` skips it.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import ARCHITECTURES, resmlp_independent
from torch.utils._pytree import tree_map

from recede import MPC, BPModified, NonFiniteLossError
from recede.methods import build_method

SCALE = 2.0**10


def _scaler(scale: float = SCALE) -> torch.amp.GradScaler:
    return torch.amp.GradScaler("cpu", init_scale=scale)


def _grads(net) -> dict:
    return {p: p.grad.clone() for p in net.parameters() if p.grad is not None}


def _methods(net, x, y):
    refresh = [(tree_map(lambda t, i=i: t[i : i + 4], x), y[i : i + 4]) for i in range(0, 8, 4)]
    yield "ckpt", build_method(net, "ckpt")
    yield "sac", build_method(net, "sac")
    for h in range(1, net.T + 1):
        yield f"mpc:{h}", MPC(net, h)
    bpm = BPModified(net, 1, period=3, offset_samples=8, micro_batch=4, batch_size=8)
    bpm.refresh(refresh)
    yield "bpm-ff", bpm


@pytest.mark.parametrize("name", ["conv-resnet", "tied-embedding", "tuple-states"])
def test_a_scaler_scales_every_gradient_exactly(name, float64):
    torch.manual_seed(0)
    make, sample = ARCHITECTURES[name]
    net, (x, y) = make(), sample()
    if name == "conv-resnet":
        x, y = torch.randn(8, 2, 8, 8), torch.randint(0, 3, (8,))
    for label, method in _methods(net, x, y):
        state = copy.deepcopy(net.state_dict())
        net.zero_grad(set_to_none=True)
        loss = method.backward(x, y)
        plain = _grads(net)
        net.load_state_dict(state)  # BatchNorm statistics as before the first call
        net.zero_grad(set_to_none=True)
        scaled_loss = method.backward(x, y, scaler=_scaler())
        assert scaled_loss == loss, label  # the returned loss is unscaled
        assert plain.keys() == _grads(net).keys(), label
        for p, g in plain.items():
            assert torch.equal(p.grad, SCALE * g), label


def test_the_users_loop_with_a_scaler_takes_the_same_steps(float64):
    torch.manual_seed(1)
    net = resmlp_independent(T=4)
    twin = copy.deepcopy(net)
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    for model, scaler in ((net, _scaler()), (twin, None)):
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        engine = MPC(model, 2)
        for _ in range(3):
            opt.zero_grad()
            engine.backward(x, y, scaler=scaler)
            if scaler is None:
                opt.step()
            else:
                scaler.step(opt)
                scaler.update()
    for p, q in zip(net.parameters(), twin.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("method", ["bp", "mpc:2", "ff", "ckpt", "sac"])
def test_an_fp16_overflow_skips_the_step_and_halves_the_scale(method):
    torch.manual_seed(2)
    net = resmlp_independent(T=4, width=16)
    before = copy.deepcopy(net.state_dict())
    x, y = torch.randn(8, 16), torch.randint(0, 3, (8,))
    scaler = _scaler(2.0**40)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    engine = build_method(net, method)
    with torch.autocast("cpu", dtype=torch.float16):
        loss = engine.backward(x, y, scaler=scaler)
    assert math.isfinite(loss) and loss < 10  # unscaled
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 2.0**39
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_a_nan_loss_raises_without_a_scaler_and_is_skipped_with_one():
    torch.manual_seed(3)
    net = resmlp_independent(T=3)
    x, y = torch.randn(4, 5), torch.randint(0, 3, (4,))
    x[0, 0] = math.nan
    with pytest.raises(NonFiniteLossError):
        MPC(net, 2).backward(x, y)
    assert all(p.grad is None for p in net.parameters())
    scaler = _scaler()
    assert math.isnan(MPC(net, 2).backward(x, y, scaler=scaler))
    before = copy.deepcopy(net.state_dict())
    scaler.step(torch.optim.SGD(net.parameters(), lr=0.1))
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


@pytest.mark.parametrize("h", [1, 2, 4])
def test_bf16_autocast_follows_the_fp32_gradient(h):
    torch.manual_seed(4)
    net = resmlp_independent(T=4, width=16)
    x, y = torch.randn(32, 16), torch.randint(0, 3, (32,))
    MPC(net, h).backward(x, y)
    exact = _grads(net)
    net.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        MPC(net, h).backward(x, y, scaler=_scaler())
    for p, g in exact.items():
        assert p.grad.dtype == torch.float32
        assert torch.nn.functional.cosine_similarity(p.grad.flatten() / SCALE, g.flatten(), dim=0) > 0.99


def test_full_horizon_under_autocast_is_plain_autocast_bitwise():
    torch.manual_seed(5)
    net = resmlp_independent(T=4, width=16)
    twin = copy.deepcopy(net)
    x, y = torch.randn(32, 16), torch.randint(0, 3, (32,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = twin.loss(x, y)
    loss.backward()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        MPC(net, net.T).backward(x, y)
    for p, q in zip(net.parameters(), twin.parameters()):
        assert (p.grad is None) == (q.grad is None)
        if p.grad is not None:
            assert torch.equal(p.grad, q.grad)


def test_a_bp_modified_refresh_that_overflows_is_retried():
    torch.manual_seed(6)
    net = resmlp_independent(T=4, width=16)
    data = torch.utils.data.TensorDataset(torch.randn(64, 16), torch.randint(0, 3, (64,)))
    method = BPModified(net, 1, period=100, offset_samples=16, micro_batch=8, data=data)
    scaler = _scaler(2.0**30)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    x, y = data[:8]
    steps_until_refresh = None
    for step in range(1, 40):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            method.backward(x, y, scaler=scaler)
        scaler.step(opt)
        scaler.update()
        if method.refreshes == 1:
            steps_until_refresh = step
            break
    assert steps_until_refresh is not None and steps_until_refresh > 1
    assert method.last_stats.step == steps_until_refresh - 1
    assert bool(torch.isfinite(method.offset).all()) and bool(method.offset.abs().sum() > 0)
