"""Heads for the earlier depths of a vision model (Paper B App. A: pool → linear).

A block's output ``x_k`` becomes a prediction through a small head so that ``L(x_k)`` is
defined at every depth (SPEC §1).  Convolutional nets get :class:`PoolHead` (global average
pool over the image, then a linear layer); transformers get :class:`TokenHead` (LayerNorm,
pool over the tokens, linear), the shape of a ViT's own classifier path.
"""

from __future__ import annotations

import torch
from torch import nn


class PoolHead(nn.Module):
    """``fc(mean over H, W of x)`` for an ``(N, C, H, W)`` feature map."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))


class TokenHead(nn.Module):
    """``fc(pool(norm(x)))`` for ``(N, L, C)`` tokens.

    Args:
        width: C.
        num_classes: outputs of ``fc``.
        pool: ``"token"`` reads the first (class) token, ``"avg"`` averages the tokens after the
            ``prefix`` ones (class and register tokens), as timm's ``global_pool_nlc`` does.
        prefix: number of leading non-patch tokens.
    """

    def __init__(self, width: int, num_classes: int, pool: str = "token", prefix: int = 1) -> None:
        super().__init__()
        if pool not in ("token", "avg"):
            raise ValueError(f"TokenHead pool must be 'token' or 'avg', got {pool!r}")
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.fc = nn.Linear(width, num_classes)
        self.pool, self.prefix = pool, prefix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        x = x[:, 0] if self.pool == "token" else x[:, self.prefix :].mean(dim=1)
        return self.fc(x)


class FeatureHead(nn.Module):
    """``fc(mean of x over every axis but the batch and the width-sized one)``, for any layout.

    A block's output may be an ``(N, C, H, W)`` map, an ``(N, H, W, C)`` map (Swin), ``(N, L,
    C)`` tokens or ``(N, C)`` features: the channel axis is the last one if its size is
    ``width``, else axis 1 (``axis``: -1 or 1, when known).  The head of an earlier depth where recede cannot
    know the layout
    (the generic path, recede.wrap(model, blocks=...)).
    """

    def __init__(self, width: int, num_classes: int, axis: int | None = None) -> None:
        super().__init__()
        self.fc = nn.Linear(width, num_classes)
        self.width, self.axis = width, axis

    def forward(self, x: torch.Tensor | tuple) -> torch.Tensor:
        x = x if isinstance(x, torch.Tensor) else x[0]  # a layer's output tuple: its hidden states
        if x.dim() > 2:
            last = self.axis == -1 if self.axis is not None else x.shape[-1] == self.width
            x = x if last else x.movedim(1, -1)
            x = x.flatten(1, -2).mean(dim=1)
        return self.fc(x)


class SequenceHead(nn.Module):
    """``fc(norm(x)[:, token])`` for ``(N, L, C)`` hidden states: a text classifier's head at an
    earlier depth, reading the first token (encoders: ``[CLS]``) or the last (decoders)."""

    def __init__(self, width: int, num_classes: int, token: str = "first") -> None:
        super().__init__()
        if token not in ("first", "last"):
            raise ValueError(f"SequenceHead token must be 'first' or 'last', got {token!r}")
        self.norm = nn.LayerNorm(width)
        self.fc = nn.Linear(width, num_classes)
        self.token = token

    def forward(self, x: torch.Tensor | tuple) -> torch.Tensor:
        x = x if isinstance(x, torch.Tensor) else x[0]  # a layer's output tuple: its hidden states
        return self.fc(self.norm(x[:, 0] if self.token == "first" else x[:, -1]))
