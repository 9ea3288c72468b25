"""The horizon engine against plain autograd: g_h by definition, h = T as BP, and bad input."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from conftest import ARCHITECTURES, resmlp_independent, resmlp_shared, slow_horizon_gradient, tanh_residual
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import recede
from recede import MPC, BlockNet, NonFiniteLossError

pytestmark = pytest.mark.usefixtures("float64")
TOL = 1e-9


def engine_grads(net: BlockNet, x, y, h: int, double: bool = False) -> float:
    net.zero_grad(set_to_none=True)
    return MPC(net, h, double=double).backward(x, y)


def max_error(net: BlockNet, reference: dict) -> float:
    return max((p.grad - g).abs().max().item() for p, g in reference.items())


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_horizon_equals_the_definition(name):
    """Every parameter's gradient — blocks and heads, shared and tied ones included — is the sum
    over its uses of ∇L(x_{min(t+h,T)}) (blocks) and ∇L(x_k) (heads, k ≥ h), the slow way."""
    torch.manual_seed(0)
    make, sample = ARCHITECTURES[name]
    net, (x, y) = make(), sample()
    for h in range(1, net.T + 1):
        engine_grads(net, x, y, h)
        reference = slow_horizon_gradient(net, x, y, h, heads=True)
        assert {id(p) for p in reference} == {id(p) for p in net.parameters() if p.grad is not None}, f"h={h}"
        assert max_error(net, reference) < TOL, f"h={h}"


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_full_horizon_is_backprop(name):
    torch.manual_seed(1)
    make, sample = ARCHITECTURES[name]
    net, (x, y) = make(), sample()
    net.zero_grad(set_to_none=True)
    expected_loss = net.loss(x, y)
    expected_loss.backward()
    reference = {p: p.grad.clone() for p in net.parameters() if p.grad is not None}
    loss = engine_grads(net, x, y, net.T)
    assert loss == pytest.approx(expected_loss.item(), abs=1e-12)
    assert {id(p) for p in net.parameters() if p.grad is not None} == {id(p) for p in reference}
    assert max_error(net, reference) < TOL


@settings(max_examples=25, deadline=None)
@given(
    T=st.integers(1, 7),
    width=st.integers(1, 6),
    batch=st.integers(1, 5),
    seed=st.integers(0, 10**6),
    shared=st.booleans(),
    data=st.data(),
)
def test_random_residual_nets(T, width, batch, seed, shared, data):
    torch.manual_seed(seed)
    net = (resmlp_shared if shared else resmlp_independent)(T=T, width=width, classes=3)
    x, y = torch.randn(batch, width), torch.randint(0, 3, (batch,))
    h = data.draw(st.integers(1, T))
    engine_grads(net, x, y, h)
    assert max_error(net, slow_horizon_gradient(net, x, y, h)) < TOL


def test_heads_learn_from_their_own_depth():
    torch.manual_seed(2)
    net = resmlp_independent(T=5)
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    h = 3
    engine_grads(net, x, y, h)
    for k in range(1, net.T + 1):
        params = net.head_parameters(k)
        if k < h:  # no block learns from L(x_k): the head is not evaluated
            assert all(p.grad is None for p in params)
            continue
        z = x
        for j in range(k):
            z = net.blocks[j](z)
        expected = torch.autograd.grad(net.depth_loss(z, y, k), params)
        for p, g in zip(params, expected):
            assert (p.grad - g).abs().max() < TOL


def test_shared_head_sums_every_evaluated_depth():
    torch.manual_seed(3)
    net = resmlp_shared(T=4)
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    h = 2
    engine_grads(net, x, y, h)
    params = net.head_parameters(1)
    expected = [torch.zeros_like(p) for p in params]
    z = x
    for k in range(1, net.T + 1):
        z = net.blocks[k - 1](z)
        if k >= h:
            for e, g in zip(expected, torch.autograd.grad(net.depth_loss(z, y, k), params, retain_graph=True)):
                e += g
    for p, e in zip(params, expected):
        assert (p.grad - e).abs().max() < TOL


@pytest.mark.parametrize("h", [2, 3, 5])
def test_double_is_loco_eq20(h):
    torch.manual_seed(4)
    net = resmlp_independent(T=5)
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    engine_grads(net, x, y, h, double=True)
    near, far = slow_horizon_gradient(net, x, y, h - 1), slow_horizon_gradient(net, x, y, h)
    for t in range(net.T):
        distinct = min(t + h - 1, net.T) != min(t + h, net.T)
        for p in net.block_parameters(t):
            expected = near[p] + far[p] if distinct else far[p]
            assert (p.grad - expected).abs().max() < TOL


def test_regrouped_stages_share_parameters():
    torch.manual_seed(5)
    net = resmlp_independent(T=7)
    stages = net.regroup(3)
    assert stages.T == 3 and [len(s) for s in stages.blocks] == [3, 2, 2]
    assert {id(p) for p in stages.parameters()} <= {id(p) for p in net.parameters()}
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    stages.zero_grad(set_to_none=True)
    MPC(stages, 2).backward(x, y)
    assert max_error(stages, slow_horizon_gradient(stages, x, y, 2)) < TOL


def test_frozen_parameters_get_no_grad():
    torch.manual_seed(6)
    net = resmlp_independent(T=4)
    frozen = [net.blocks[1].linear.weight, net.blocks[3].linear.bias, net.heads[3].weight]
    for p in frozen:
        p.requires_grad_(False)
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    for h in (1, 2, 4):
        engine_grads(net, x, y, h)
        assert all(p.grad is None for p in frozen)
        assert max_error(net, slow_horizon_gradient(net, x, y, h)) < TOL


def test_gradients_accumulate_like_backward():
    torch.manual_seed(7)
    net = resmlp_independent(T=4)
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    engine_grads(net, x, y, 2)
    once = {p: p.grad.clone() for p in net.parameters() if p.grad is not None}
    MPC(net, 2).backward(x, y)
    for p, g in once.items():
        assert (p.grad - 2 * g).abs().max() < TOL


def test_parameters_never_share_a_grad_tensor():
    class AddBias(nn.Module):  # autograd hands both biases the same incoming gradient
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(3))

        def forward(self, x):
            return x + self.a + self.b

    net = BlockNet([AddBias(), AddBias()], nn.Identity(), nn.MSELoss())
    MPC(net, 1).backward(torch.randn(4, 3), torch.randn(4, 3))
    grads = [p.grad for p in net.parameters()]
    assert len({g.data_ptr() for g in grads}) == len(grads)


def test_batchnorm_blocks_run_forward_once_per_step():
    torch.manual_seed(8)
    make, sample = ARCHITECTURES["conv-resnet"]
    net, (x, y) = make(), sample()
    calls = [0] * net.T
    for t, block in enumerate(net.blocks):
        block.register_forward_hook(lambda *_, t=t: calls.__setitem__(t, calls[t] + 1))
    for h in (1, 3, net.T):
        calls[:] = [0] * net.T
        MPC(net, h).backward(x, y)
        assert calls == [1] * net.T


def test_eval_mode_and_an_ordinary_training_loop():
    torch.manual_seed(9)
    make, sample = ARCHITECTURES["conv-resnet"]
    net, (x, y) = make(), sample()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    engine = MPC(net, 2)
    first = None
    for _ in range(15):
        opt.zero_grad()
        loss = engine.backward(x, y)
        first = first if first is not None else loss
        opt.step()
    assert loss < first
    net.eval()
    net.zero_grad(set_to_none=True)
    engine.backward(x, y)
    assert max_error(net, slow_horizon_gradient(net, x, y, 2)) < TOL


@pytest.mark.parametrize("bad", [0, 5, -1, 2.0, "2", None, True])
def test_horizon_out_of_range_names_the_range(bad):
    net = resmlp_independent(T=4)
    with pytest.raises(ValueError, match=r"horizon must be an integer in \[1, 4\]"):
        MPC(net, bad)


def test_double_needs_two_blocks_of_horizon():
    with pytest.raises(ValueError, match="horizon >= 2"):
        MPC(resmlp_independent(T=4), 1, double=True)


@pytest.mark.parametrize("poison", [math.nan, math.inf])
@pytest.mark.parametrize("h", [1, 2, 4])
def test_non_finite_loss_leaves_every_grad_untouched(poison, h):
    torch.manual_seed(10)
    net = resmlp_independent(T=4)
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    engine_grads(net, x, y, 4)
    before = {p: p.grad.clone() for p in net.parameters() if p.grad is not None}
    x_bad = x.clone()
    x_bad[0, 0] = poison
    with pytest.raises(NonFiniteLossError, match="non-finite loss"):
        MPC(net, h).backward(x_bad, y)
    assert all(torch.equal(p.grad, g) for p, g in before.items())
    net.zero_grad(set_to_none=True)
    with pytest.raises(NonFiniteLossError):
        MPC(net, h).backward(x_bad, y)
    assert all(p.grad is None for p in net.parameters())


def test_a_head_that_does_not_fit_names_the_block():
    blocks = [tanh_residual(5), nn.Linear(5, 7), tanh_residual(7)]
    heads = [nn.Linear(5, 3), nn.Linear(5, 3), nn.Linear(7, 3)]  # head 2 expects 5, block 1 gives 7
    net = BlockNet(blocks, heads, nn.CrossEntropyLoss())
    x, y = torch.randn(4, 5), torch.randint(0, 3, (4,))
    message = r"head at depth 2 does not accept the output of block 1 \(a tensor of shape \(4, 7\), float64 on cpu\)"
    with pytest.raises(ValueError, match=message):
        MPC(net, 1).backward(x, y)
    assert all(p.grad is None for p in net.parameters())
    with pytest.raises(ValueError, match=message):
        net.check(x, y)  # checks every depth, also those a horizon never evaluates
    MPC(net, 3).backward(x, y)  # h = T evaluates only the final head


def test_a_loss_that_does_not_fit_the_targets_is_named():
    net = resmlp_independent(T=3)
    with pytest.raises(ValueError, match="loss_fn does not accept the prediction of the head at depth 1"):
        MPC(net, 1).backward(torch.randn(4, 5), torch.randn(4, 9))


def test_blocknet_validates_its_parts():
    with pytest.raises(ValueError, match="at least one block"):
        BlockNet([], nn.Identity(), nn.MSELoss())
    with pytest.raises(ValueError, match="3 blocks but 2 heads"):
        BlockNet([nn.Identity()] * 3, [nn.Identity()] * 2, nn.MSELoss())
    with pytest.raises(ValueError, match=r"groups must be in \[1, 3\]"):
        resmlp_independent(T=3).regroup(4)


def test_a_users_sequential_wrapped_in_place():
    torch.manual_seed(11)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh())
    net = recede.wrap(model, head=nn.Linear(6, 2), loss_fn=nn.MSELoss())
    assert net.T == 4 and net.blocks[0] is model[0]
    x, y = torch.randn(5, 4), torch.randn(5, 2)
    for h in (1, 2, 4):  # the Tanh blocks have no parameters: only input gradients pass them
        engine_grads(net, x, y, h)
        assert max_error(net, slow_horizon_gradient(net, x, y, h)) < TOL


class DropoutNormBlock(nn.Module):
    """A block with BatchNorm statistics and a dropout draw, the two side effects of a forward."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear, self.norm, self.drop = nn.Linear(width, width), nn.BatchNorm1d(width), nn.Dropout(0.3)

    def forward(self, x):
        return x + self.drop(torch.tanh(self.norm(self.linear(x))))


def _norm_dropout_net(T: int = 5, width: int = 6) -> BlockNet:
    return BlockNet(
        [DropoutNormBlock(width) for _ in range(T)], [nn.Linear(width, 3) for _ in range(T)], nn.CrossEntropyLoss()
    )


def _after_step(net: BlockNet, step) -> tuple[dict, dict, torch.Tensor]:
    torch.manual_seed(123)
    net.zero_grad(set_to_none=True)
    step()
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    return grads, {n: b.clone() for n, b in net.named_buffers()}, torch.get_rng_state()


def test_first_step_at_full_horizon_is_plain_pytorch_bitwise():
    torch.manual_seed(12)
    net = _norm_dropout_net()
    twin = copy.deepcopy(net)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    plain = _after_step(twin, lambda: twin.loss(x, y).backward())
    engine = _after_step(net, lambda: MPC(net, net.T).backward(x, y))
    assert plain[0].keys() == engine[0].keys()
    assert all(torch.equal(plain[0][n], engine[0][n]) for n in plain[0])
    assert all(torch.equal(plain[1][n], engine[1][n]) for n in plain[1])  # num_batches_tracked 1, not 2
    assert int(engine[1]["blocks.0.norm.num_batches_tracked"]) == 1
    assert torch.equal(plain[2], engine[2])  # the dropout stream moved exactly as a plain forward moves it


@pytest.mark.parametrize("h", [1, 2, 4])
def test_every_horizon_updates_batchnorm_once_and_draws_dropout_as_the_forward(h):
    torch.manual_seed(13)
    net = _norm_dropout_net()
    twin = copy.deepcopy(net)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    plain = _after_step(twin, lambda: twin.loss(x, y).backward())
    engine = _after_step(net, lambda: MPC(net, h).backward(x, y))
    assert all(torch.equal(plain[1][n], engine[1][n]) for n in plain[1])
    assert torch.equal(plain[2], engine[2])


def test_check_has_no_side_effects_and_names_the_misfit():
    torch.manual_seed(14)
    net = _norm_dropout_net()
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    buffers, rng = {n: b.clone() for n, b in net.named_buffers()}, torch.get_rng_state()
    net.check(x, y)
    assert net.training and all(m.training for m in net.modules())
    assert all(torch.equal(b, buffers[n]) for n, b in net.named_buffers())
    assert torch.equal(torch.get_rng_state(), rng)
    with pytest.raises(
        ValueError, match=r"block 0 \(DropoutNormBlock\) failed on its input, a tensor of shape \(16, 4\)"
    ):
        net.check(torch.randn(16, 4), y)
    assert all(torch.equal(b, buffers[n]) for n, b in net.named_buffers())


@pytest.mark.parametrize(
    "make_x, message",
    [
        (
            lambda: torch.randn(4, 9),
            r"block 0 \(Residual\) failed on its input, a tensor of shape \(4, 9\), float64 on cpu",
        ),
        (
            lambda: torch.randn(4, 5, dtype=torch.float32),
            r"block 0 \(Residual\) failed on its input, a tensor of shape \(4, 5\), float32 on cpu",
        ),
        (
            lambda: torch.randn(4, 5, device="meta"),
            r"block 0 \(Residual\) failed on its input, a tensor of shape \(4, 5\), float64 on meta",
        ),
        (lambda: torch.randn(0, 5), r"empty batch: x holds 0 samples \(a tensor of shape \(0, 5\)"),
        (
            lambda: (torch.randn(4, 5), torch.randn(4, 7)),
            r"block 0 \(Residual\) failed on its input, a tuple of \[tensor of shape \(4, 5\)",
        ),
    ],
)
@pytest.mark.parametrize("h", [1, 3])
def test_an_input_that_does_not_fit_names_block_0_and_the_input(make_x, message, h):
    net = resmlp_independent(T=3)
    with pytest.raises(ValueError, match=message):
        MPC(net, h).backward(make_x(), torch.randint(0, 3, (4,)))
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize(
    "loss_fn, message",
    [
        (lambda prediction, y: 1.0, "loss_fn must return a scalar tensor, got float at depth"),
        (
            lambda prediction, y: nn.functional.cross_entropy(prediction.detach(), y),
            "the loss at depth .* does not depend on the network",
        ),
    ],
)
@pytest.mark.parametrize("h", [1, 3])
def test_a_loss_that_is_not_a_differentiable_tensor_is_named(loss_fn, message, h):
    blocks = resmlp_independent(T=3)
    net = BlockNet(list(blocks.blocks), list(blocks.heads), loss_fn)
    with pytest.raises(ValueError, match=message):
        MPC(net, h).backward(torch.randn(4, 5), torch.randint(0, 3, (4,)))
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("horizon", [np.int64(2), np.int32(3), torch.tensor(2), torch.tensor(1, dtype=torch.int8)])
def test_numpy_and_0d_tensor_horizons_are_integers(horizon):
    assert MPC(resmlp_independent(T=4), horizon).horizon == int(horizon)


@pytest.mark.parametrize("bad", [np.float64(2.0), torch.tensor(2.0), torch.tensor([2])])
def test_non_integer_horizons_are_refused(bad):
    with pytest.raises(ValueError, match=r"horizon must be an integer in \[1, 4\]"):
        MPC(resmlp_independent(T=4), bad)


def test_a_compiled_or_foreign_module_says_what_to_do():
    net = resmlp_independent(T=3)
    with pytest.raises(ValueError, match=r"MPC got torch.compile\(net\).*net.compile\(...\)"):
        MPC(torch.compile(net), 2)
    with pytest.raises(ValueError, match="MPC needs a recede.BlockNet, got Linear; make one with recede.wrap"):
        MPC(nn.Linear(3, 3), 1)
