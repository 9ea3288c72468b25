"""Checkpointed BP: BP's gradient exactly, fewer saved activations, recomputation counted."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from recede import models
from recede.core.engine import MPC, NonFiniteLossError
from recede.core.recompute import CheckpointedBP
from recede.measure.memory import measure
from recede.methods import build_method, parse_method


def _grads(net, method, x, y) -> list[torch.Tensor]:
    net.zero_grad(set_to_none=True)
    loss = method.backward(x, y)
    return [loss] + [p.grad.clone() if p.grad is not None else None for p in net.parameters()]


def _assert_same_loss_and_gradients(checkpointed: list, exact: list) -> None:
    """``[loss, grad, ...]`` of checkpointed BP equal to BP's in float64 (None where BP has none)."""
    assert checkpointed[0] == pytest.approx(exact[0], rel=1e-12)
    for g, h in zip(exact[1:], checkpointed[1:]):
        assert (g is None) == (h is None)
        if g is not None:
            torch.testing.assert_close(h, g, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("segments", [None, 1, 2, 5])
def test_gradient_is_bp_gradient_in_float64(segments) -> None:
    torch.manual_seed(0)
    net = models.build("resmlp", width=6, depth=7).double()
    x, y = torch.randn(16, 1, dtype=torch.float64), torch.randn(16, 4, dtype=torch.float64)
    exact = _grads(net, MPC(net, net.T), x, y)
    _assert_same_loss_and_gradients(_grads(net, CheckpointedBP(net, segments), x, y), exact)


def test_saved_memory_counts_boundaries_and_one_recomputed_segment() -> None:
    torch.manual_seed(0)
    net = models.build("resmlp", width=64, depth=16)
    x, y = torch.randn(128, 1), torch.randn(128, 4)
    _, bp = measure(lambda: MPC(net, net.T).backward(x, y), module=net)
    _, ckpt = measure(lambda: CheckpointedBP(net, 4).backward(x, y), module=net)
    _, one_segment = measure(lambda: CheckpointedBP(net, 1).backward(x, y), module=net)
    assert one_segment.saved_peak_bytes == pytest.approx(bp.saved_peak_bytes, rel=0.01)  # plain BP
    # 4 segments of 4 equal blocks: the kept segment inputs plus one recomputed segment,
    # clearly more than a quarter of BP (recomputation is counted) and clearly less than BP
    assert 0.3 * bp.saved_peak_bytes < ckpt.saved_peak_bytes < 0.6 * bp.saved_peak_bytes


def test_method_name_and_errors() -> None:
    net = models.build("resmlp", depth=9)
    assert build_method(net, "ckpt").segments == 9  # one segment per block
    assert build_method(net, "ckpt:2").segments == 2
    assert parse_method("ckpt:4").label == "BP+ckpt(4)"
    with pytest.raises(ValueError, match=r"segments must be an integer in \[1, 9\]"):
        build_method(net, "ckpt:10")
    x, y = torch.full((4, 1), float("nan")), torch.zeros(4, 4)
    with pytest.raises(NonFiniteLossError):
        CheckpointedBP(net).backward(x, y)
    assert all(p.grad is None for p in net.parameters())


def test_batchnorm_statistics_end_the_step_as_bp_leaves_them() -> None:
    torch.manual_seed(0)
    net = models.build("resnet62", widths=(4, 8), blocks_per_stage=2, num_classes=3, in_channels=1)
    twin = models.build("resnet62", widths=(4, 8), blocks_per_stage=2, num_classes=3, in_channels=1)
    twin.load_state_dict(net.state_dict())
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))
    MPC(net, net.T).backward(x, y)
    CheckpointedBP(twin, 2).backward(x, y)
    for (name, a), b in zip(net.named_buffers(), twin.buffers()):
        torch.testing.assert_close(b, a, msg=name)
    for p, q in zip(net.parameters(), twin.parameters()):
        torch.testing.assert_close(q.grad, p.grad)


@pytest.mark.parametrize("name", ["tied-embedding", "tuple-states"])
def test_integer_and_pytree_inputs_give_the_bp_gradient(name, float64) -> None:
    from conftest import ARCHITECTURES

    torch.manual_seed(3)
    make, sample = ARCHITECTURES[name]
    net, (x, y) = make(), sample()
    exact = _grads(net, MPC(net, net.T), x, y)
    for segments in range(1, net.T + 1):
        _assert_same_loss_and_gradients(_grads(net, CheckpointedBP(net, segments), x, y), exact)


# -- MPC(net, h, recompute=True) ---------------------------------------------------------------


def _per_use(net, method, x, y) -> list[torch.Tensor]:
    """The step's losses and every parameter's gradient (summed over its uses), in order."""
    step = method.gradients(x, y)
    total = step.total()
    zero = torch.zeros(())
    return [step.losses[k] for k in sorted(step.losses)] + [total.get(p, zero) for p in net.parameters()]


@pytest.mark.parametrize(
    "name",
    [
        "shared-blocks",
        "tied-embedding",
        "head-tied-to-block0",
        "tuple-states",
        "dict-states",
        "resmlp-shared",
        "conv-resnet",
    ],
)
def test_recomputing_mpc_equals_mpc_in_float64_at_every_horizon(name, float64) -> None:
    from conftest import ARCHITECTURES

    make, sample = ARCHITECTURES[name]
    torch.manual_seed(1)
    net, (x, y) = make(), sample()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    for h in range(1, net.T + 1):
        for double in [False, True] if h >= 2 else [False]:
            net.load_state_dict(state)
            exact = _per_use(net, MPC(net, h, double=double), x, y)
            after = {k: v.clone() for k, v in net.state_dict().items()}
            net.load_state_dict(state)
            again = _per_use(net, MPC(net, h, double=double, recompute=True), x, y)
            assert len(again) == len(exact)
            for a, b in zip(again, exact):
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14, msg=f"h={h} double={double}")
            for key, value in net.state_dict().items():  # BatchNorm statistics updated once
                torch.testing.assert_close(value, after[key], msg=key)


def _counted_dropout_net(T: int = 5, width: int = 6):
    """Residual blocks with dropout that count their forwards; independent linear heads."""
    from recede import BlockNet

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear, self.drop, self.calls = torch.nn.Linear(width, width), torch.nn.Dropout(0.5), 0

        def forward(self, z):
            self.calls += 1
            return z + torch.tanh(self.drop(self.linear(z)))

    heads = [torch.nn.Linear(width, 3) for _ in range(T)]
    return BlockNet([Block() for _ in range(T)], heads, torch.nn.functional.cross_entropy)


def test_dropout_is_replayed_and_each_forward_runs_only_as_often_as_it_must(float64) -> None:
    from recede.measure.cost import recomputed_forwards

    torch.manual_seed(0)
    net = _counted_dropout_net()
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    for h in range(1, net.T + 1):
        torch.manual_seed(5)
        exact = _per_use(net, MPC(net, h), x, y)
        after_exact = torch.rand(1)  # the caller's generator continues as without recomputation
        for block in net.blocks:
            block.calls = 0
        torch.manual_seed(5)
        again = _per_use(net, MPC(net, h, recompute=True), x, y)
        assert torch.equal(torch.rand(1), after_exact)
        for a, b in zip(again, exact):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
        assert [b.calls for b in net.blocks] == [1 + n for n in recomputed_forwards(net.T, h)]
    assert recomputed_forwards(5, 1) == (0,) * 5  # local: nothing to recompute
    assert recomputed_forwards(5, 5) == (1, 1, 1, 1, 0)  # per-block checkpointing
    assert recomputed_forwards(5, 2) == (1, 1, 1, 1, 0)  # h - 1 per block, none for the last


def test_recomputing_mpc_keeps_boundaries_and_one_block_graph() -> None:
    torch.manual_seed(0)
    net = models.build("resmlp", width=64, depth=16)
    x, y = torch.randn(256, 1), torch.randn(256, 4)
    saved = {}
    for name, method in {
        "mpc:4": MPC(net, 4),
        "mpc-rc:4": MPC(net, 4, recompute=True),
        "ff": MPC(net, 1),
        "bp": MPC(net, net.T),
        "rc-bp": MPC(net, net.T, recompute=True),
    }.items():
        saved[name] = measure(partial(method.backward, x, y), module=net)[1].saved_peak_bytes
    boundary = 256 * 64 * 4
    assert saved["mpc-rc:4"] < 0.6 * saved["mpc:4"]
    # h + 1 boundaries are kept beside one block's graph and a head: well below MPC(4)'s four graphs
    assert saved["mpc-rc:4"] <= saved["ff"] + 4 * boundary
    assert saved["rc-bp"] < 0.4 * saved["bp"]  # per-block checkpointing, done by the engine


def test_mpc_rc_method_name() -> None:
    net = models.build("resmlp", depth=6)
    method = build_method(net, "mpc-rc:3")
    assert isinstance(method, MPC) and method.recompute and method.horizon == 3
    assert parse_method("mpc-rc:3").label == "MPC(h=3)+rc"
    with pytest.raises(ValueError, match="bpm- modifies a local method"):
        parse_method("bpm-mpc-rc:2")


def test_real_peaks_order_bp_checkpointing_and_recomputing_horizons() -> None:
    """The real peak (allocation events) at a size where activations dominate: per-block
    checkpointing and MPC(2) with recomputation hold less than BP, and MPC(2) with
    recomputation less than MPC(2) (measured: 11.1, 7.1, 4.7, 4.2 MiB)."""
    from recede.measure.memory import allocation_peak

    torch.manual_seed(0)
    net = models.build("resmlp", width=128, depth=12)
    x, y = torch.randn(1024, 1), torch.randn(1024, 4)
    peaks = {}
    for name in ["bp", "ckpt", "mpc:2", "mpc-rc:2"]:
        method = build_method(net, name)
        for _ in range(2):  # the second step, after a warm-up
            net.zero_grad(set_to_none=True)
            peaks[name] = allocation_peak(partial(method.backward, x, y))[1]
    net.zero_grad(set_to_none=True)
    # a block saves its input and its ReLU's output; per-block checkpointing keeps the inputs
    assert peaks["ckpt"] < 0.7 * peaks["bp"]
    assert peaks["mpc-rc:2"] < 0.95 * peaks["mpc:2"] and peaks["mpc-rc:2"] < 0.45 * peaks["bp"]
