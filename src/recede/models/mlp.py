"""Paper A's fully connected workloads (App. D.1): M1 linear residual net, M2 residual MLP.

Both are 15 fully connected layers of width 10; every layer but the first and the last is
residual, ``x + W x (+ b)``.  Each layer is one block.  M1 has no bias and no activation and
its widths all match, so ``L`` reads every depth directly (identity heads, Paper A §3).  M2 has
ReLU and biases and maps to 4 outputs (or, with cross-entropy, classifies); depths 1..T-1
reach the loss through a linear head 10 → out (independent per depth, or one shared), the last
block's output needs none.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from recede.core.blocks import BlockNet
from recede.models import register


class Residual(nn.Module):
    """``x + act(W x + b)``; ``activation`` is a module class (``nn.ReLU``, ``nn.Tanh``) or None."""

    def __init__(self, width: int, bias: bool = True, activation: Callable[[], nn.Module] | None = nn.ReLU) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width, bias=bias)
        self.act = activation() if activation is not None else nn.Identity()

    def forward(self, x):
        return x + self.act(self.linear(x))


def _layers(in_dim: int, width: int, out_dim: int, depth: int, bias: bool, activation: bool) -> list[nn.Module]:
    if depth < 2:
        raise ValueError(f"depth must be at least 2 (first and last layer), got {depth}")
    first = nn.Sequential(nn.Linear(in_dim, width, bias=bias), nn.ReLU() if activation else nn.Identity())
    middle = [Residual(width, bias, nn.ReLU if activation else None) for _ in range(depth - 2)]
    return [first, *middle, nn.Linear(width, out_dim, bias=bias)]


@register("linear-resnet")
def linear_resnet(width: int = 10, depth: int = 15, in_dim: int | None = None, out_dim: int | None = None) -> BlockNet:
    """M1: linear residual net, no bias, no activation; identity heads and MSE (Paper A eq. 12)."""
    in_dim, out_dim = in_dim or width, out_dim or width
    if out_dim != width:
        raise ValueError(f"linear-resnet reads every depth directly, so out_dim must equal width ({width})")
    blocks = _layers(in_dim, width, out_dim, depth, bias=False, activation=False)
    return BlockNet(blocks, nn.Identity(), nn.MSELoss())


LOSSES = {"mse": nn.MSELoss, "cross-entropy": nn.CrossEntropyLoss}


@register("resmlp")
def resmlp(
    width: int = 10, depth: int = 15, in_dim: int = 1, out_dim: int = 4, head: str = "independent", loss: str = "mse"
) -> BlockNet:
    """M2: residual MLP with ReLU and bias; linear heads 10 → out_dim at depths 1..T-1.

    ``loss="cross-entropy"`` makes it a classifier (``out_dim`` classes), e.g. on ``spirals``
    or ``mnist1d``; M2 itself is ``"mse"``.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    blocks = _layers(in_dim, width, out_dim, depth, bias=True, activation=True)
    if head == "independent":
        heads = [nn.Linear(width, out_dim) for _ in range(depth - 1)]
    elif head == "shared":
        heads = [nn.Linear(width, out_dim)] * (depth - 1)
    else:
        raise ValueError(f"head must be 'independent' or 'shared', got {head!r}")
    return BlockNet(blocks, [*heads, nn.Identity()], LOSSES[loss]())
