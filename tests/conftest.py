"""Shared fixtures: small block networks of several architectures, and the slow reference g_h."""

from __future__ import annotations

import os

import pytest
import torch

# Tests run two per core under pytest-xdist and start subprocesses of their own: one thread each
# avoids OpenMP oversubscription, which slows these tiny models tenfold on two cores.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)
from torch import nn

from recede import BlockNet
from recede.models import build


class Residual(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.tanh(self.linear(x))


def resmlp_independent(T: int = 6, width: int = 5, classes: int = 3) -> BlockNet:
    """Residual MLP, one linear head per depth, cross-entropy."""
    return BlockNet([Residual(width) for _ in range(T)], [nn.Linear(width, classes) for _ in range(T)],
                    nn.CrossEntropyLoss())


def resmlp_shared(T: int = 6, width: int = 5, classes: int = 3) -> BlockNet:
    """Residual MLP, one head shared by every depth."""
    return BlockNet([Residual(width) for _ in range(T)], nn.Linear(width, classes), nn.CrossEntropyLoss())


def conv_resnet() -> BlockNet:
    """ResNet-62's structure at tiny size: BatchNorm, strided transitions, pool → linear heads."""
    return build("resnet62", widths=(3, 4), blocks_per_stage=2, num_classes=3, in_channels=2)


def linear_resnet() -> BlockNet:
    """M1: deep linear residual net, identity heads, MSE."""
    return build("linear-resnet", width=4, depth=5)


ARCHITECTURES = {
    "resmlp-independent": (resmlp_independent, lambda: (torch.randn(8, 5), torch.randint(0, 3, (8,)))),
    "resmlp-shared": (resmlp_shared, lambda: (torch.randn(8, 5), torch.randint(0, 3, (8,)))),
    "conv-resnet": (conv_resnet, lambda: (torch.randn(4, 2, 8, 8), torch.randint(0, 3, (4,)))),
    "linear-resnet": (linear_resnet, lambda: (torch.randn(8, 4), torch.randn(8, 4))),
}


@pytest.fixture
def float64():
    """Gradient comparisons run in float64; the default dtype is restored afterwards."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def slow_horizon_gradient(net: BlockNet, x: torch.Tensor, y: torch.Tensor, h: int) -> dict:
    """g_h by definition: for each block t, a fresh full forward to x_{min(t+h,T)} and autograd."""
    grads = {}
    for t in range(net.T):
        if not net.block_parameters(t):
            continue
        k = min(t + h, net.T)
        z = x
        for j in range(k):
            z = net.blocks[j](z)
        params = net.block_parameters(t)
        for p, g in zip(params, torch.autograd.grad(net.depth_loss(z, y, k), params)):
            grads[p] = g
    return grads


def check_wrap(model: nn.Module, x: torch.Tensor, y: torch.Tensor, horizons: str = "all",
               **options: object) -> BlockNet:
    """``recede.wrap(model, **options)`` is the model itself, in pieces, with its own loss.

    Checks that the BlockNet holds every parameter of ``model`` (new ones are heads' only),
    that ``net(x)`` is ``model(x)`` bit for bit, that MPC runs for every h (``horizons="ends"``:
    h = 1 and T) and fills every block's gradient, and that at h = T the gradients equal plain
    autograd's of ``cross_entropy(model(x), y)``.  Returns the net.
    """
    import recede

    net = recede.wrap(model, **options)
    own = {id(p) for p in model.parameters()}
    assert own <= {id(p) for p in net.parameters()}
    block_ids = {id(p) for b in net.blocks for p in b.parameters()}
    assert not [p for p in net.parameters() if id(p) not in own and id(p) in block_ids]  # only heads are new
    torch.testing.assert_close(net(x), model(x), rtol=0, atol=0)
    for h in range(1, net.T + 1) if horizons == "all" else sorted({1, net.T}):
        net.zero_grad(set_to_none=True)
        recede.MPC(net, h).backward(x, y)
        for t in range(net.T):
            assert all(p.grad is not None for p in net.block_parameters(t)), (h, t)
    wrapped = {n: p.grad for n, p in model.named_parameters()}  # h = T, the last horizon run
    model.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    for name, p in model.named_parameters():
        assert (wrapped[name] is None) == (p.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(wrapped[name], p.grad, rtol=1e-10, atol=1e-12, msg=name)
    return net
