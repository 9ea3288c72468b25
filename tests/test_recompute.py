"""Checkpointed BP: BP's gradient exactly, fewer saved activations, recomputation counted."""

from __future__ import annotations

import pytest
import torch

from recede import models
from recede.engine import MPC, NonFiniteLossError
from recede.memory import measure
from recede.methods import build_method, parse_method
from recede.recompute import CheckpointedBP


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
    assert build_method(net, "ckpt").segments == 3
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
