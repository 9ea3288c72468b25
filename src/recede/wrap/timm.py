"""timm classifiers as chains of their own blocks (Paper A eq. 1), read through timm's conventions.

A timm model's ``forward`` is ``forward_head(forward_features(x))``, and ``forward_features``
is a stem, a trunk of blocks (``layer1..4``, ``stages``, ``blocks``; a stage is an
``nn.Sequential`` of blocks or a stage module with ``.blocks``), and sometimes a final
normalisation or 1×1 convolution.  The units are the trunk's blocks; the stem (and a stage's
downsampling layers) ride with the next block; the final head runs the model's own code after
the trunk and then its own ``forward_head``, so at h = T the gradients are plain autograd's
on ``cross_entropy(model(x), y)``.  Only the stem and what follows the trunk differ between
architectures (:data:`ARCHS`); subclasses are accepted when they keep ``forward_features``.

* ResNet (any depth, ResNet-D, SE...): the stem conv1 → bn1 → act1 → maxpool, T = total blocks.
* ConvNeXt: stem; each stage's downsample rides with its first block; norm_pre → head.
* EfficientNet / MobileNetV3: conv_stem → bn1; the blocks of every stage; conv_head → bn2 → head.
* VisionTransformer: patch embedding → class/register tokens and position embedding
  (the model's own ``_pos_embed``) → patch_drop → norm_pre ride with the first block; the final
  head is norm → the model's ``forward_head`` (token, average or attention pooling).

Other timm models (MobileViT, BEiT, LeViT, RegNet, EfficientViT, EVA...) are read by timm's
``blocks`` / ``stages`` conventions and run their own forward, cut at their blocks
(:mod:`recede.wrap.vision_structure`).

Earlier depths get pool → linear heads (transformers: LayerNorm → the model's token or average
pooling over the non-prefix tokens → linear); ``head="group"`` shares one per run of equal-width
blocks; ``head="shared"`` (ViT) is the model's own head at every depth.

>>> net = recede.wrap(timm.create_model("vit_small_patch16_224", pretrained=False), head="shared")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from recede.wrap import Layout, register_family
from recede.wrap.heads import PoolHead, TokenHead
from recede.wrap.vision import ModelPart, PartFn, vision_layout
from recede.wrap.vision_structure import structural_layout, timm_blocks


def _forward_head(model: Any, x: torch.Tensor) -> torch.Tensor:
    return model.forward_head(x)


def _convnext_head(model: Any, x: torch.Tensor) -> torch.Tensor:
    return model.forward_head(model.norm_pre(x))


def _efficientnet_head(model: Any, x: torch.Tensor) -> torch.Tensor:
    return model.forward_head(model.bn2(model.conv_head(x)))


def _vit_head(model: Any, x: torch.Tensor) -> torch.Tensor:
    return model.forward_head(model.norm(x))


def _vit_embed(model: Any, x: torch.Tensor) -> torch.Tensor:
    """``VisionTransformer.forward_features`` up to its blocks."""
    return model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))


@dataclass(frozen=True)
class Arch:
    """What a timm architecture's ``forward_features`` does around its trunk.

    Attributes:
        trunk: the attributes holding its stages or blocks, in order.
        head: ``head(model, x)``, the rest of ``forward_features`` and then ``forward_head``.
        stem: ``stem(model, x)``, the part before the trunk; ``None``: the children registered
            before the trunk, applied in order.
        tokens: activations are ``(N, L, C)`` tokens (else ``(N, C, H, W)`` maps).
    """

    trunk: tuple[str, ...]
    head: PartFn
    stem: PartFn | None = None
    tokens: bool = False


ARCHS = {
    "ResNet": Arch(("layer1", "layer2", "layer3", "layer4"), _forward_head),
    "ConvNeXt": Arch(("stages",), _convnext_head),
    "EfficientNet": Arch(("blocks",), _efficientnet_head),
    "MobileNetV3": Arch(("blocks",), _forward_head),
    "VisionTransformer": Arch(("blocks",), _vit_head, _vit_embed, tokens=True),
}
STAGES = {"ConvNeXtStage": ("downsample",)}  # stage modules with .blocks: what runs before the blocks


def _is_timm(model: nn.Module) -> bool:
    return any(c.__module__.startswith("timm.") for c in type(model).__mro__)


@register_family("timm", _is_timm)
def layout(model: Any) -> Layout:
    """The trunk's blocks as units, the stem with the first, the model's own head path as the final head."""
    family = f"timm {type(model).__name__}"
    arch_class = _arch_class(model)
    if arch_class is None:  # MobileViT, BEiT, LeViT, RegNet, EfficientViT, EVA...: cut its own forward
        return structural_layout(model, family, timm_blocks(model))
    arch = ARCHS[arch_class.__name__]
    children = [name for name, _ in model.named_children()]
    first, last = children.index(arch.trunk[0]), children.index(arch.trunk[-1])
    stem_names = children[:first]
    if arch.stem is not None:
        stem_names += [name for name, _ in model.named_parameters(recurse=False)]
    pieces: list[tuple[nn.Module, bool]] = [(ModelPart(model, stem_names, arch.stem), False)]
    for name in arch.trunk:
        pieces += _trunk_pieces(getattr(model, name), family)
    final = ModelPart(model, children[last + 1 :], arch.head)
    classes = int(getattr(model, "num_classes", 0) or 0)
    make: Callable[[int], nn.Module] | None
    if classes == 0:
        make = None
    elif arch.tokens:
        pool = "token" if getattr(model, "global_pool", "token") == "token" else "avg"
        make = lambda width: TokenHead(width, classes, pool, model.num_prefix_tokens)  # noqa: E731
    else:
        make = lambda width: PoolHead(width, classes)  # noqa: E731
    return vision_layout(model, family, pieces, final, make)


def _arch_class(model: Any) -> type | None:
    """The timm class in ``model``'s MRO that :data:`ARCHS` describes, if ``forward_features`` is
    its; ``None`` for another timm model (read by structure)."""
    for cls in type(model).__mro__:
        if cls.__name__ in ARCHS and cls.__module__.startswith("timm."):
            if type(model).forward_features is not getattr(cls, "forward_features", None):
                raise ValueError(
                    f"timm {type(model).__name__} overrides {cls.__name__}.forward_features; "
                    "recede.wrap cannot tell its blocks apart"
                )
            return cls
    return None


def _trunk_pieces(container: Any, family: str) -> list[tuple[nn.Module, bool]]:
    """A trunk container's blocks: its ``nn.Sequential`` stages flattened, stage modules opened."""
    pieces: list[tuple[nn.Module, bool]] = []
    for module in container.children():
        kind = type(module).__name__
        if type(module) is nn.Sequential:
            pieces += [(block, True) for block in module]
        elif hasattr(module, "blocks"):
            if kind not in STAGES:
                raise ValueError(f"{family}: stage type {kind} is not supported by recede.wrap")
            pieces += [(getattr(module, name), False) for name in STAGES[kind]]
            pieces += [(block, True) for block in module.blocks]
        else:
            pieces.append((module, True))
    return pieces
