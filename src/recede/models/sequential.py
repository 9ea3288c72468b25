"""The registry's name for a user's ``nn.Sequential``: ``build("sequential", model=..., head=...)``.

It is :func:`recede.wrap` (one block per child), with cross-entropy as the default loss.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from recede.core.blocks import BlockNet, LossFn
from recede.models import register


@register("sequential")
def sequential(model: nn.Sequential, head: nn.Module | Sequence[nn.Module], loss_fn: LossFn | None = None) -> BlockNet:
    """:func:`recede.wrap` of ``model`` with ``head``; ``loss_fn`` defaults to cross-entropy."""
    from recede.wrap import wrap

    if not isinstance(model, nn.Sequential):
        raise ValueError(f"model 'sequential' needs an nn.Sequential, got {type(model).__name__}")
    return wrap(model, head=head, loss_fn=loss_fn or nn.CrossEntropyLoss())
