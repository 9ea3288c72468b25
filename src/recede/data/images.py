"""Image and sequence classification sets that need no download."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from recede.data import Task, register


@register("digits")
def digits(size: int = 8, channels: int = 1, test_fraction: float = 0.2, seed: int = 0) -> Task:
    """scikit-learn's bundled 8×8 digits (1 797 images, 10 classes), standardised.

    ``size=32, channels=3`` resizes bilinearly and repeats the channel, the input shape of the
    CIFAR models (the offline stand-in for CIFAR-10 in Paper A's M3).
    """
    from sklearn.datasets import load_digits

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = ((x - x.mean()) / x.std()).repeat(1, channels, 1, 1)
    y = torch.tensor(bunch.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(y)))
    test_idx, train_idx = perm[:n_test], perm[n_test:]
    return Task("digits", TensorDataset(x[train_idx], y[train_idx]), TensorDataset(x[test_idx], y[test_idx]),
                "classification", (channels, size, size), 10)
