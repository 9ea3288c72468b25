"""ResNet-62 of Paper A (Table D1, App. D.1) as a block network.

A stem convolution, then three stages of ``blocks_per_stage`` two-convolution residual blocks
(BatchNorm and ReLU after each convolution) with 16/32/64 channels; before the first block of
stages 2 and 3 a strided convolution halves height and width.  The stem and the transition
convolutions travel with the first residual block of their stage, so T = 3 × blocks_per_stage
(30 for ResNet-62: 60 convolutions in blocks, plus stem and classifier).  Every depth has a
global-average-pool → linear head; ``head="group"`` shares one head among the blocks of a
stage (their widths agree), ``"independent"`` gives each depth its own.  ``adapter="lokr"`` freezes
the built model's weights and adds Paper B's r = 1, α = 4 LoKr adapters to every block
convolution (:mod:`recede.models.peft_adapters`), as the timm models do; a plain state dict
then loads into the wrapped layers (:func:`recede.models.weights.load_weights`).
"""

from __future__ import annotations

import torch
from torch import nn

from recede.core.blocks import BlockNet
from recede.models import register
from recede.wrap.heads import PoolHead


def conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class ConvResBlock(nn.Module):
    """``relu(x + bn(conv(relu(bn(conv(x))))))`` (Paper A Fig. D1)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = conv_bn_relu(channels, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn2(self.conv2(self.conv1(x))))


@register("resnet62")
def resnet62(
    num_classes: int = 10,
    in_channels: int = 3,
    widths: tuple[int, ...] = (16, 32, 64),
    blocks_per_stage: int = 10,
    head: str = "independent",
    adapter: str | None = None,
    adapter_rank: int = 1,
    adapter_alpha: float = 4.0,
) -> BlockNet:
    """ResNet-62 (Paper A Table D1); ``widths`` and ``blocks_per_stage`` shrink it for tests;
    ``adapter="lokr"`` (rank ``adapter_rank``, scale ``adapter_alpha``) adds LoKr to every block
    convolution once the model is built (:func:`recede.models.peft_adapters.apply_adapter`)."""
    if head not in ("independent", "group"):
        raise ValueError(f"head must be 'independent' or 'group', got {head!r}")
    if blocks_per_stage < 1 or not widths:
        raise ValueError("resnet62 needs at least one stage and one block per stage")
    blocks: list[nn.Module] = []
    heads: list[nn.Module] = []
    c_prev = in_channels
    for s, c in enumerate(widths):
        entry = conv_bn_relu(c_prev, c, stride=1 if s == 0 else 2)
        group_head = PoolHead(c, num_classes)
        for b in range(blocks_per_stage):
            block = ConvResBlock(c)
            blocks.append(nn.Sequential(entry, block) if b == 0 else block)
            heads.append(group_head if head == "group" else PoolHead(c, num_classes))
        c_prev = c
    net = BlockNet(blocks, heads, nn.CrossEntropyLoss())
    if adapter is None:
        return net
    from recede.models.peft_adapters import apply_adapter

    return apply_adapter(net, adapter, r=adapter_rank, alpha=adapter_alpha)
