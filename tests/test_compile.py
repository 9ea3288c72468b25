"""torch.compile: compiled blocks give the eager gradients at every horizon.

The engine re-uses a block's graph within the window (``retain_graph``), which AOTAutograd's
donated buffers forbid; the engine turns them off for its own calls, so a block compiled
before — even one whose graph was already compiled with donated buffers by an ordinary
training step — works at every h.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import ARCHITECTURES
from torch import nn

from recede import MPC, BlockNet
from recede.methods import build_method


def _grads(net, method, x, y) -> list[torch.Tensor]:
    net.zero_grad(set_to_none=True)
    method.backward(x, y)
    return [p.grad.clone() if p.grad is not None else None for p in net.parameters()]


def _check_every_method(name: str, backend: str) -> None:
    torch.manual_seed(0)
    make, sample = ARCHITECTURES[name]
    eager, (x, y) = make(), sample()
    compiled = copy.deepcopy(eager)
    compiled.compile(backend=backend)
    assert all(b._compiled_call_impl is not None for b in compiled.blocks)
    plain = compiled.loss(x, y)  # an ordinary step first compiles the blocks, outside the engine
    plain.backward()
    names = [f"mpc:{h}" for h in range(1, eager.T + 1)] + ["ckpt", "loco-double:2"]
    for method in names:
        for net in (eager, compiled):  # BatchNorm statistics move alike in both
            net.load_state_dict(eager.state_dict())
        expected = _grads(eager, build_method(eager, method), x, y)
        got = _grads(compiled, build_method(compiled, method), x, y)
        for g, e in zip(got, expected):
            assert (g is None) == (e is None), method
            if g is not None:  # float32 round-off of fused kernels, relative to the gradient's scale
                assert float((g - e).abs().max()) <= 1e-4 * float(e.abs().max()) + 1e-12, method


@pytest.mark.parametrize("name", ["conv-resnet", "tied-embedding", "tuple-states"])
def test_compiled_blocks_aot_eager_every_horizon(name):
    _check_every_method(name, "aot_eager")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["conv-resnet", "tied-embedding"])
def test_compiled_blocks_inductor_every_horizon(name):
    _check_every_method(name, "inductor")


def test_bp_modified_on_compiled_blocks():
    torch.manual_seed(1)
    make, sample = ARCHITECTURES["conv-resnet"]
    net = make()
    net.compile(backend="aot_eager")
    data = torch.utils.data.TensorDataset(torch.randn(32, 2, 8, 8), torch.randint(0, 3, (32,)))
    method = build_method(net, "bpm-mpc:2", refresh_data=data, batch_size=8, period=2, offset_samples=16, micro_batch=8)
    for i in range(3):
        net.zero_grad(set_to_none=True)
        loss = method.backward(*data[8 * i : 8 * i + 8])
        assert torch.isfinite(torch.tensor(loss))
    assert method.refreshes == 2


def test_compiling_the_whole_net_is_refused_with_advice():
    make, _ = ARCHITECTURES["conv-resnet"]
    with pytest.raises(ValueError, match=r"compile them in place with net.compile\(...\)"):
        MPC(torch.compile(make()), 2)


def test_blocks_compiled_and_stepped_outside_the_engine_are_recompiled_not_wrong(caplog):
    """A graph compiled with AOTAutograd's donated buffers overwrites what it saved, so re-using
    it (as 1 < h < T do) would be silently wrong; the engine turns them off and recompiles."""
    import torch._functorch.config as functorch_config

    torch.manual_seed(2)
    make, sample = ARCHITECTURES["conv-resnet"]
    eager, (x, y) = make(), sample()
    net = copy.deepcopy(eager)
    functorch_config.donated_buffer = True  # PyTorch's default, as a user's process starts
    for block in net.blocks:
        block.compile(backend="aot_eager")
    z = x
    for block in net.blocks:  # the user's own forward and backward, not through recede
        z = block(z)
    z.sum().backward()
    eager.load_state_dict(net.state_dict())  # BatchNorm statistics moved by that step
    expected = _grads(eager, MPC(eager, 2), x, y)
    got = _grads(net, MPC(net, 2), x, y)
    assert "turned off AOTAutograd's donated buffers" in caplog.text
    assert not functorch_config.donated_buffer
    for g, e in zip(got, expected):
        assert (g is None) == (e is None)
        if g is not None:
            assert float((g - e).abs().max()) <= 1e-4 * float(e.abs().max()) + 1e-12


def test_many_block_shapes_stay_compiled_past_dynamos_default_recompile_limit():
    """Eleven Linear blocks of distinct widths are eleven recompiles of one code object; none may
    fall back to eager (Dynamo's default recompile_limit is 8)."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    widths = list(range(3, 15))
    net = BlockNet(
        [nn.Sequential(nn.Linear(a, b), nn.Tanh()) for a, b in zip(widths, widths[1:])],
        [nn.Linear(b, 2) for b in widths[1:]],
        nn.CrossEntropyLoss(),
    )
    torch._dynamo.reset()
    counters.clear()
    net.compile(backend="eager")
    MPC(net, 2).backward(torch.randn(4, 3), torch.randint(0, 2, (4,)))
    assert not any("recompile limit" in reason for reason in counters["unimplemented"])
    assert counters["stats"]["unique_graphs"] >= net.T


def test_modules_compiled_inside_a_block_count_as_compiled(caplog):
    """A wrapped block holds the user's modules, which they may have compiled before wrapping:
    the engine must see them and turn AOTAutograd's donated buffers off, as for a compiled block."""
    import torch._functorch.config as functorch_config

    from recede.core.blocks import is_compiled

    torch.manual_seed(3)
    make, sample = ARCHITECTURES["conv-resnet"]
    eager, (x, y) = make(), sample()
    net = copy.deepcopy(eager)
    functorch_config.donated_buffer = True
    inner = [next(block.children()) for block in net.blocks]
    for module in inner:
        module.compile(backend="aot_eager")
    assert all(is_compiled(block) for block in net.blocks) and not any(b._compiled_call_impl for b in net.blocks)
    z = x
    for block in net.blocks:  # the user's own step compiles them with donated buffers
        z = block(z)
    z.sum().backward()
    eager.load_state_dict(net.state_dict())
    expected = _grads(eager, MPC(eager, 2), x, y)
    got = _grads(net, MPC(net, 2), x, y)
    assert not functorch_config.donated_buffer
    for g, e in zip(got, expected):
        assert (g is None) == (e is None)
        if g is not None:
            assert float((g - e).abs().max()) <= 1e-4 * float(e.abs().max()) + 1e-12
