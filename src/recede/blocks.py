"""A network as T blocks with a loss that accepts every block's output.

Paper A eq. 1 writes a network as ``x_{t+1} = f_t(x_t, u_t)``, t = 0..T-1, and assumes the loss
is *compatible* with every state: ``L(x_t)`` is defined for t = 1..T (Paper A §3, SPEC §1).
:class:`BlockNet` is that object: the T blocks ``f_t``, a head per depth that maps ``x_k`` to a
prediction, and ``loss_fn(prediction, target)``.  ``L(x_k) = loss_fn(head_k(x_k), y)``.

Heads are either one module per depth (``heads[k-1]`` reads ``x_k``, the output of block k-1,
so ``heads[-1]`` is the final head) or one module shared by all depths (Paper B, App. A).
The modules are held, not copied: wrapping a model and stepping an optimizer on the wrapper
trains the user's own modules.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class BlockNet(nn.Module):
    """T blocks ``f_0..f_{T-1}``, heads for depths 1..T, and a loss.

    Args:
        blocks: the T block modules, applied in order.
        heads: a sequence of T modules (``heads[k-1]`` reads the output of block k-1), or one
            module shared by every depth.
        loss_fn: ``loss_fn(prediction, target) -> scalar tensor``.
    """

    def __init__(self, blocks: Sequence[nn.Module], heads: Sequence[nn.Module] | nn.Module,
                 loss_fn: LossFn) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        if len(self.blocks) == 0:
            raise ValueError("BlockNet needs at least one block; got an empty sequence")
        self.shared_head = isinstance(heads, nn.Module) and not isinstance(heads, nn.ModuleList)
        if self.shared_head:
            self.heads = nn.ModuleList([heads])
        else:
            self.heads = nn.ModuleList(heads)
            if len(self.heads) != len(self.blocks):
                raise ValueError(f"BlockNet got {len(self.blocks)} blocks but {len(self.heads)} heads; "
                                 "give one head per block output or a single shared head module")
        self.loss_fn = loss_fn
        self.heads_checked = False

    @property
    def T(self) -> int:
        """Number of blocks."""
        return len(self.blocks)

    def head(self, k: int) -> nn.Module:
        """The head that reads ``x_k``, the output of block k-1 (k = 1..T)."""
        if not 1 <= k <= self.T:
            raise IndexError(f"depth k must be in [1, {self.T}], got {k}")
        return self.heads[0] if self.shared_head else self.heads[k - 1]

    def block_parameters(self, t: int) -> list[nn.Parameter]:
        """The trainable parameters ``u_t`` of block t (those that require grad)."""
        return [p for p in self.blocks[t].parameters() if p.requires_grad]

    def head_parameters(self, k: int) -> list[nn.Parameter]:
        """The trainable parameters of the head at depth k, minus any a block already owns."""
        return self.trainable_parameters()[1][k - 1]

    def trainable_parameters(self) -> tuple[list[list[nn.Parameter]], list[list[nn.Parameter]]]:
        """``(blocks, heads)``: per block t the trainable ``u_t``, and per depth k = 1..T the
        trainable parameters of head k that no block owns — gathered in one pass."""
        blocks = [[p for p in b.parameters() if p.requires_grad] for b in self.blocks]
        block_ids = {id(p) for b in self.blocks for p in b.parameters()}
        per_head = [[p for p in h.parameters() if p.requires_grad and id(p) not in block_ids]
                    for h in self.heads]
        heads = per_head * self.T if self.shared_head else per_head
        return blocks, heads

    def depth_loss(self, x_k: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
        """``L(x_k) = loss_fn(head_k(x_k), y)``; a head or loss that does not fit is named."""
        try:
            prediction = self.head(k)(x_k)
        except (RuntimeError, ValueError, TypeError, IndexError) as err:
            raise ValueError(f"the head at depth {k} does not accept the output of block {k - 1} "
                             f"(shape {tuple(x_k.shape)}): {err}") from err
        try:
            loss = self.loss_fn(prediction, y)
        except (RuntimeError, ValueError, TypeError, IndexError) as err:
            raise ValueError(f"loss_fn does not accept the prediction of the head at depth {k} "
                             f"(shape {tuple(prediction.shape)}) with targets of shape "
                             f"{tuple(y.shape)}: {err}") from err
        if loss.dim() != 0:
            raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)} at depth {k}")
        return loss

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The final prediction ``head_T(x_T)``."""
        for block in self.blocks:
            x = block(x)
        return self.head(self.T)(x)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The final loss ``L(x_T)`` through one ordinary forward pass."""
        return self.loss_fn(self(x), y)

    def check_heads(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Run one no-grad forward and check that every head and the loss accept each depth.

        Raises ``ValueError`` naming the first block whose output its head does not fit.
        """
        with torch.no_grad():
            for k, block in enumerate(self.blocks, start=1):
                x = block(x)
                self.depth_loss(x, y, k)
        self.heads_checked = True

    def regroup(self, n_stages: int) -> "BlockNet":
        """The same modules as ``n_stages`` stages of consecutive blocks (LoCo's blocks).

        Blocks are split as evenly as ``torch.tensor_split`` splits T items; each stage's head
        is the head of its last block.  Parameters are shared with ``self``, not copied.
        """
        if not 1 <= n_stages <= self.T:
            raise ValueError(f"n_stages must be in [1, {self.T}], got {n_stages}")
        bounds = [len(part) for part in torch.arange(self.T).tensor_split(n_stages)]
        stages, heads, end = [], [], 0
        for size in bounds:
            stages.append(nn.Sequential(*self.blocks[end:end + size]))
            end += size
            heads.append(self.head(end))
        net = BlockNet(stages, heads[0] if self.shared_head else heads, self.loss_fn)
        return net
