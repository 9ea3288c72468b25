"""torchvision classifiers: ResNet (Wide-ResNet, ResNeXt), VGG, MobileNet v2/v3, EfficientNet,
ConvNeXt and ViT as chains of their own blocks (Paper A eq. 1).

* ResNet: one unit per residual block of ``layer1..layer4``; the stem (conv1, bn1, relu,
  maxpool) rides with the first.  Final head: avgpool → flatten → fc.
* VGG: one unit per convolution with its BatchNorm and ReLU; each max-pool rides with the next
  convolution, the last opens the final head (avgpool → flatten → classifier).
* MobileNet v2/v3, EfficientNet, ConvNeXt: one unit per inverted residual / MBConv / CNBlock of
  ``features``; the stem and ConvNeXt's downsampling layers ride with the next block, the
  final 1×1 convolution opens the final head (pool → flatten → classifier).
* ViT: one unit per encoder block; patch projection, class token, position embedding and
  dropout ride with the first.  Final head: encoder.ln → class token → heads.

Earlier depths get pool → linear heads (:mod:`recede.wrap.heads`; LayerNorm, class token,
linear for the ViT), ``head="stage"`` one per run of equal-width blocks, ``head="shared"``
(ViT only) the model's own head at every depth.

>>> net = recede.wrap(torchvision.models.resnet18(num_classes=10))          # T = 8
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from recede.wrap import Layout, register_family
from recede.wrap.heads import PoolHead, TokenHead
from recede.wrap.vision import ModelPart, out_width, vision_layout

BLOCKS = ("BasicBlock", "Bottleneck", "InvertedResidual", "MBConv", "FusedMBConv", "CNBlock")
FEATURE_MODELS = ("VGG", "MobileNetV2", "MobileNetV3", "EfficientNet", "ConvNeXt")
SUPPORTED = ("ResNet", *FEATURE_MODELS, "VisionTransformer")


def _is_torchvision(model: nn.Module) -> bool:
    return any(c.__module__.startswith("torchvision.models.") for c in type(model).__mro__)


@register_family("torchvision", _is_torchvision)
def layout(model: Any) -> Layout:
    """The model's blocks as units, its stem with the first, its classifier path as the final head."""
    kind = _torchvision_class(model).__name__
    make: Callable[[int], nn.Module]
    family = f"torchvision {type(model).__name__}"
    if kind == "ResNet":
        stem = ModelPart(model, ["conv1", "bn1", "relu", "maxpool"])
        pieces = [(stem, False)] + [(b, True) for s in (1, 2, 3, 4) for b in getattr(model, f"layer{s}")]
        final = ModelPart(model, ["avgpool", "fc"], _resnet_head)
        make = lambda width: PoolHead(width, model.fc.out_features)  # noqa: E731
    elif kind == "VisionTransformer":
        stem = ModelPart(model, ["conv_proj", "class_token", "encoder.pos_embedding", "encoder.dropout"],
                         _vit_embed)
        pieces = [(stem, False)] + [(b, True) for b in model.encoder.layers]
        final = ModelPart(model, ["encoder.ln", "heads"], _vit_head)
        make = lambda width: TokenHead(width, out_width(model.heads), "token", 1)  # type: ignore[arg-type]  # noqa: E731  (its heads end in a Linear: a width)
    else:
        pieces = _vgg_pieces(model.features) if kind == "VGG" else list(_feature_pieces(model.features))
        pooling = ["avgpool"] if hasattr(model, "avgpool") else []  # MobileNetV2 pools functionally
        final = ModelPart(model, [*pooling, "classifier"],
                          _convnext_head if kind == "ConvNeXt" else _pool_classify)
        make = lambda width: PoolHead(width, out_width(model.classifier))  # type: ignore[arg-type]  # noqa: E731  (ends in a Linear)
    return vision_layout(model, family, pieces, final, make)


def _torchvision_class(model: nn.Module) -> type:
    """The supported torchvision class in ``model``'s MRO, if ``model`` keeps its forward."""
    for cls in type(model).__mro__:
        if cls.__name__ in SUPPORTED and cls.__module__.startswith("torchvision.models."):
            for method in ("forward", "_forward_impl"):
                if getattr(type(model), method, None) is not getattr(cls, method, None):
                    raise ValueError(f"torchvision {type(model).__name__} overrides {cls.__name__}.{method}; "
                                     "recede.wrap cannot tell its blocks apart")
            return cls
    raise ValueError(f"recede.wrap does not support torchvision {type(model).__name__}; torchvision "
                     f"models it splits: {', '.join(SUPPORTED)}; otherwise build "
                     "recede.BlockNet(blocks, heads, loss_fn)")


def _feature_pieces(features: nn.Sequential):
    """``features`` flattened through plain ``nn.Sequential`` stages; known block classes are blocks."""
    for module in features:
        if type(module) is nn.Sequential:
            yield from _feature_pieces(module)
        else:
            yield module, type(module).__name__ in BLOCKS


def _vgg_pieces(features: nn.Sequential) -> list[tuple[nn.Module, bool]]:
    """VGG's flat ``features``: a block per convolution with the BatchNorm and ReLU after it."""
    pieces: list[tuple[nn.Module, bool]] = []
    group: list[nn.Module] = []
    for module in features:
        if isinstance(module, (nn.Conv2d, nn.MaxPool2d)) and group:
            pieces.append((nn.Sequential(*group), True))
            group = []
        if isinstance(module, nn.MaxPool2d):
            pieces.append((module, False))
        else:
            group.append(module)
    if group:
        pieces.append((nn.Sequential(*group), True))
    return pieces


def _resnet_head(model: Any, x: torch.Tensor) -> torch.Tensor:
    """``ResNet._forward_impl`` after ``layer4``."""
    return model.fc(torch.flatten(model.avgpool(x), 1))


def _pool_classify(model: Any, x: torch.Tensor) -> torch.Tensor:
    """VGG / MobileNet / EfficientNet after ``features`` (MobileNetV2 pools functionally)."""
    pooled = model.avgpool(x) if hasattr(model, "avgpool") else nn.functional.adaptive_avg_pool2d(x, (1, 1))
    return model.classifier(torch.flatten(pooled, 1))


def _convnext_head(model: Any, x: torch.Tensor) -> torch.Tensor:
    """ConvNeXt after ``features``: its classifier flattens after its LayerNorm."""
    return model.classifier(model.avgpool(x))


def _vit_embed(model: Any, x: torch.Tensor) -> torch.Tensor:
    """``VisionTransformer.forward`` up to the encoder's layers."""
    x = model._process_input(x)
    x = torch.cat([model.class_token.expand(x.shape[0], -1, -1), x], dim=1)
    return model.encoder.dropout(x + model.encoder.pos_embedding)


def _vit_head(model: Any, x: torch.Tensor) -> torch.Tensor:
    """``VisionTransformer.forward`` after the encoder's layers: ln, class token, heads."""
    return model.heads(model.encoder.ln(x)[:, 0])
