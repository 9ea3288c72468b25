"""Synthetic sets: the regression sets of Paper A App. D.2 (Table D2 footnotes 1 and 2), and
interleaved spirals, a 2-D classification task (the robustness study of the BP-modified loss)."""

from __future__ import annotations

import math

import torch
from torch.utils.data import TensorDataset

from recede.data import Task, register


def _split(x: torch.Tensor, y: torch.Tensor, n_train: int) -> tuple[TensorDataset, TensorDataset]:
    return TensorDataset(x[:n_train], y[:n_train]), TensorDataset(x[n_train:], y[n_train:])


@register("linear")
def linear(n: int = 10_000, dim: int = 10, n_test: int = 1_000, seed: int = 0) -> Task:
    """M1 data: ``y = W0 x`` with ``W0_ij, x_i ~ N(0, 1/N)`` (std N^{-1/2}), N = ``dim``."""
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    g = torch.Generator().manual_seed(seed)
    std = dim**-0.5
    w0 = torch.randn(dim, dim, generator=g) * std
    x = torch.randn(n + n_test, dim, generator=g) * std
    train, test = _split(x, x @ w0.T, n)
    return Task("linear", train, test, "regression", (dim,), dim)


@register("trig")
def trig(n: int = 100_000, n_test: int = 10_000, noise: float = 0.03, seed: int = 0) -> Task:
    """M2 data: ``y = (1+ε)(cos πx, sin πx, cos 2πx, sin 2πx)``, x ~ U[-2, 2], ε ~ N(0, noise²)."""
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    if noise < 0:
        raise ValueError(f"noise must be ≥ 0, got {noise}")
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n + n_test, 1, generator=g) * 4 - 2
    eps = torch.randn(n + n_test, 1, generator=g) * noise
    y = (1 + eps) * torch.cat(
        [torch.cos(math.pi * x), torch.sin(math.pi * x), torch.cos(2 * math.pi * x), torch.sin(2 * math.pi * x)], dim=1
    )
    train, test = _split(x, y, n)
    return Task("trig", train, test, "regression", (1,), 4)


@register("spirals")
def spirals(
    n: int = 2000, n_test: int = 1000, arms: int = 2, turns: float = 1.5, noise: float = 0.05, seed: int = 0
) -> Task:
    """Interleaved spirals in the plane: ``arms`` classes, each a spiral of ``turns`` turns.

    A point of class c at radius r ~ U(0, 1) sits at angle ``2π(turns·r + c/arms)`` plus
    Gaussian noise of std ``noise`` on each coordinate.  A 2-D classification task whose
    classes no linear head can separate, so local losses at shallow depths learn little.
    """
    if n < 1 or arms < 2:
        raise ValueError(f"spirals needs n ≥ 1 and arms ≥ 2, got n={n}, arms={arms}")
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, arms, (n + n_test,), generator=g)
    r = torch.rand(n + n_test, generator=g)
    angle = 2 * math.pi * (turns * r + y / arms)
    x = r[:, None] * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    x = (x + noise * torch.randn(n + n_test, 2, generator=g)) * 2
    train, test = _split(x, y, n)
    return Task("spirals", train, test, "classification", (2,), arms)
