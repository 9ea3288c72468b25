"""``nn.Sequential``: one unit per child (Paper A eq. 1 with the children as the blocks f_t).

A sequential has no heads and no loss of its own: the loss must accept every depth (SPEC §1),
so give ``head=`` (one module shared by every depth when the widths agree, or one per block;
``heads[k-1]`` reads the output of block k-1, use ``nn.Identity()`` where a block's output
already is the prediction) and ``loss_fn=``.

>>> net = recede.wrap(nn.Sequential(block0, block1, block2), head=head, loss_fn=nn.CrossEntropyLoss())
"""

from __future__ import annotations

from torch import nn

from recede.wrap import Layout, register_family


@register_family("nn.Sequential", lambda model: isinstance(model, nn.Sequential))
def layout(model: nn.Sequential) -> Layout:
    """The children of ``model`` as units; the heads and the loss are the user's."""
    return Layout(units=list(model.children()), final_head=None, loss_fn=None)
