"""The layer-aware cost model: its pass counts against the FLOPs the engine really spends, and
its arithmetic."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from recede import MPC, BlockNet
from recede.measure.cost import (
    BlockCosts,
    calibrate,
    horizon_cost,
    passes,
    predicted_ratio,
    recomputed_bp_cost,
    uniform_ratio,
)
from recede.methods import build_method
from recede.models import build


class _Flops(TorchDispatchMode):
    """Counts the FLOPs of every matrix product and convolution dispatched, backward included."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        count = flop_registry.get(func._overloadpacket)
        if count is not None:
            self.total += count(*args, **kwargs, out_val=out)
        return out


def flops(run) -> int:
    with _Flops() as counter:
        run()
    return counter.total


def flop_meter(runs):
    return {name: flops(run) for name, run in runs.items()}


def mixed_depth_net(T: int = 7, width: int = 6, shared_head: bool = False) -> BlockNet:
    """Blocks of 1, 2 or 3 linear layers (so W, D and B differ), a head per depth or one shared."""

    def block(layers: int) -> nn.Module:
        return nn.Sequential(*(m for i in range(layers) for m in (nn.Linear(width, width, bias=i % 2 == 0), nn.ReLU())))

    heads = nn.Linear(width, 3) if shared_head else [nn.Linear(width, 3) for _ in range(T)]
    return BlockNet([block(1 + t % 3) for t in range(T)], heads, nn.CrossEntropyLoss())


METHODS = [
    "bp",
    "ff",
    "mpc:2",
    "mpc:3",
    "mpc:6",
    "loco:3",
    "loco:7",
    "loco-double:2",
    "loco-double:3",
    "ckpt",
    "ckpt:1",
    "ckpt:7",
    "mpc-rc:1",
    "mpc-rc:2",
    "mpc-rc:3",
    "mpc-rc:6",
    "mpc-rc:7",
]


@pytest.mark.parametrize("shared_head", [False, True])
def test_predicted_flops_equal_what_the_engine_spends(shared_head: bool) -> None:
    torch.manual_seed(0)
    net = mixed_depth_net(shared_head=shared_head)
    x, y = torch.randn(5, 6), torch.randint(0, 3, (5,))
    costs, _ = calibrate(net, x, y, flop_meter)
    bp = horizon_cost(costs, net.T)
    methods = [build_method(net, m) for m in METHODS] + [
        MPC(net, h, double=True, recompute=rc) for h in range(2, net.T + 1) for rc in (False, True)
    ]
    for method in methods:
        method.backward(x, y)  # first step out of the way (head checks)
        spent = flops(partial(method.backward, x, y))
        assert predicted_ratio(costs, method) * bp == pytest.approx(spent, rel=1e-12), method


def test_predicted_flops_on_a_conv_resnet() -> None:
    torch.manual_seed(0)
    net = build("resnet62", widths=(3, 4), blocks_per_stage=2, num_classes=3, in_channels=2)
    x, y = torch.randn(4, 2, 8, 8), torch.randint(0, 3, (4,))
    costs, _ = calibrate(net, x, y, flop_meter)
    for h in range(1, net.T + 1):
        for recompute in (False, True):
            method = MPC(net, h, recompute=recompute)
            method.backward(x, y)
            assert horizon_cost(costs, h, recompute=recompute) == pytest.approx(
                flops(partial(method.backward, x, y)), rel=1e-12
            ), (h, recompute)


def test_pass_counts_by_hand() -> None:
    # T = 4, h = 2: targets 2, 3 carry through one block each (D1, D2) and weight blocks 0, 1;
    # the final sweep weights block 2 (lowest) and fully back-propagates block 3.
    assert passes(4, 2) == passes(4, 2, False)
    n = passes(4, 2)
    assert (n.weight_grad, n.backward, n.input_vjp, n.heads) == ((1, 1, 1, 0), (0, 0, 0, 1), (0, 1, 1, 0), (2, 3, 4))
    n = passes(4, 1)  # FF: weights only, every depth's head
    assert (n.weight_grad, n.backward, n.input_vjp, n.heads) == ((1, 1, 1, 1), (0,) * 4, (0,) * 4, (1, 2, 3, 4))
    n = passes(4, 4)  # BP: block 0 never needs its input gradient
    assert (n.weight_grad, n.backward, n.input_vjp, n.heads) == ((1, 0, 0, 0), (0, 1, 1, 1), (0,) * 4, (4,))
    # LoCo-double at h = 2: target k weights blocks k-2 (W) and k-1 (B: its input-VJP feeds k-2)
    n = passes(4, 2, double=True)
    assert (n.weight_grad, n.backward, n.input_vjp, n.heads) == ((2, 1, 1, 0), (0, 1, 1, 1), (0,) * 4, (1, 2, 3, 4))


def test_costs_add_up() -> None:
    costs = BlockCosts(
        forward=(1, 2, 3),
        input_vjp=(10, 20, 30),
        weight_grad=(100, 200, 300),
        backward=(1000, 2000, 3000),
        head=(7, 8, 9),
    )
    assert horizon_cost(costs, 3) == 6 + 100 + 2000 + 3000 + 9
    assert horizon_cost(costs, 1) == 6 + 600 + 24
    assert horizon_cost(costs, 2) == 6 + 100 + 20 + 200 + 3000 + 8 + 9  # target 2: D1 W0; final: W1 B2
    assert recomputed_bp_cost(costs, 2) == 6 + (1 + 2) + 6000 - 10 + 9  # segments [0, 1], [2]; no D0
    stages = costs.groups(2)  # [0, 1], [2]
    assert stages.forward == (3, 3) and stages.input_vjp == (30, 30) and stages.backward == (3000, 3000)
    assert stages.weight_grad == (100 + 2000, 300) and stages.head == (8, 9)


def test_uniform_ratio_is_paper_a_count() -> None:
    assert uniform_ratio(6, 6) == pytest.approx(1.0)
    assert uniform_ratio(6, 1) == pytest.approx((2 + 1 / 6) / 3)
    assert uniform_ratio(32, 16) == pytest.approx((2 + (16 * 15 + 16) / 32) / 3)


def test_calibrate_leaves_the_model_alone_and_measures_alongside_runs() -> None:
    torch.manual_seed(0)
    net = build("resnet62", widths=(3, 4), blocks_per_stage=2, num_classes=3, in_channels=2)
    x, y = torch.randn(4, 2, 8, 8), torch.randint(0, 3, (4,))
    before = [b.clone() for b in net.buffers()]
    calibrate(net, x, y, flop_meter)
    assert all(torch.equal(a, b) for a, b in zip(before, net.buffers()))  # the passes ran on a copy

    ckpt = build_method(net, "ckpt")  # writes BatchNorm buffers back in place after each step

    def after_a_ckpt_step(runs):
        values = {}
        for name, run in runs.items():
            ckpt.backward(x, y)
            run()
            values[name] = 1.0
        return values

    calls = []
    costs, alongside = calibrate(net, x, y, after_a_ckpt_step, alongside={"mine": lambda: calls.append(1)})
    assert alongside == {"mine": 1.0} and calls == [1]
    assert costs.T == net.T and all(c == 1.0 for c in costs.forward + costs.backward + costs.head)
