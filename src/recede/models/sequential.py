"""Any user ``nn.Sequential`` as a block network.

Each child of the sequential is one block ``f_t`` (Paper A eq. 1).  The loss must be
compatible with every block's output (Paper A §3, SPEC §1): give one head shared by all
depths when the widths agree, or one head per child (``heads[k-1]`` reads the output of
child k-1).  Use an ``nn.Identity`` head where a block's output already is a prediction.

>>> net = recede.models.wrap(nn.Sequential(block0, block1, block2), head, nn.CrossEntropyLoss())
>>> net = recede.models.build("sequential", model=seq, head=[h1, h2, h3], loss_fn=nn.MSELoss())
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from recede.blocks import BlockNet, LossFn
from recede.models import register


def wrap(model: nn.Sequential, head: nn.Module | Sequence[nn.Module], loss_fn: LossFn) -> BlockNet:
    """One block per child of ``model``; ``head`` shared or one per child; the modules are held."""
    if not isinstance(model, nn.Sequential):
        raise ValueError(f"wrap needs an nn.Sequential (one block per child), got {type(model).__name__}")
    return BlockNet.from_sequential(model, head, loss_fn)


@register("sequential")
def sequential(model: nn.Sequential, head: nn.Module | Sequence[nn.Module],
               loss_fn: LossFn | None = None) -> BlockNet:
    """The registry's name for :func:`wrap`; ``loss_fn`` defaults to cross-entropy."""
    return wrap(model, head, loss_fn or nn.CrossEntropyLoss())
