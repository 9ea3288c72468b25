"""torchvision classifiers: ResNet (Wide-ResNet, ResNeXt), VGG, MobileNet v2/v3, EfficientNet,
ConvNeXt and ViT as chains of their own blocks (Paper A eq. 1).

* ResNet: one unit per residual block of ``layer1..layer4``; the stem (conv1, bn1, relu,
  maxpool) rides with the first.  Final head: avgpool → flatten → fc.
* VGG: one unit per convolution with its BatchNorm and ReLU; each max-pool rides with the next
  convolution, the last opens the final head (avgpool → flatten → classifier).
* MobileNet v2/v3, EfficientNet, ConvNeXt: one unit per inverted residual / MBConv / CNBlock of
  ``features``; the stem and ConvNeXt's downsampling layers ride with the next block, the
  final 1×1 convolution opens the final head (pool → flatten → classifier).
* A replaced classifier (``model.fc = nn.Sequential(nn.Dropout(.2), nn.Linear(512, 10))``, a
  user's module, ``nn.Identity()`` with ``loss_fn=``) is the final head as it is; earlier heads
  give as many outputs as it does (:func:`outputs`).
* ViT: one unit per encoder block; patch projection, class token, position embedding and
  dropout ride with the first.  Final head: encoder.ln → class token → heads.

Other torchvision classifiers (Swin, RegNet, DenseNet, ShuffleNet) are read by structure and
run their own forward, cut at their blocks (:mod:`recede.wrap.vision_structure`).

Earlier depths get pool → linear heads (:mod:`recede.wrap.heads`; LayerNorm, class token,
linear for the ViT), ``head="group"`` one per run of equal-width blocks, ``head="shared"``
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
from recede.wrap.vision_structure import structural_layout, torchvision_blocks

BLOCKS = ("BasicBlock", "Bottleneck", "InvertedResidual", "MBConv", "FusedMBConv", "CNBlock")
FEATURE_MODELS = ("VGG", "MobileNetV2", "MobileNetV3", "EfficientNet", "ConvNeXt")
SUPPORTED = ("ResNet", *FEATURE_MODELS, "VisionTransformer")


def _is_torchvision(model: nn.Module) -> bool:
    return any(c.__module__.startswith("torchvision.models.") for c in type(model).__mro__)


@register_family("torchvision", _is_torchvision)
def layout(model: Any) -> Layout:
    """The model's blocks as units, its stem with the first, its classifier path as the final head."""
    family = f"torchvision {type(model).__name__}"
    cls = _torchvision_class(model)
    if cls is None:  # Swin, RegNet, DenseNet, ShuffleNet...: the model's own forward, cut at its blocks
        return structural_layout(model, family, torchvision_blocks(model))
    kind = cls.__name__
    make: Callable[[int], nn.Module]
    if kind == "ResNet":
        stem = ModelPart(model, ["conv1", "bn1", "relu", "maxpool"])
        pieces = [(stem, False)] + [(b, True) for s in (1, 2, 3, 4) for b in getattr(model, f"layer{s}")]
        final = ModelPart(model, ["avgpool", "fc"], _resnet_head)
        make = lambda width: PoolHead(width, outputs(model.fc, model.layer4[-1]))  # noqa: E731
    elif kind == "VisionTransformer":
        stem = ModelPart(model, ["conv_proj", "class_token", "encoder.pos_embedding", "encoder.dropout"], _vit_embed)
        pieces = [(stem, False)] + [(b, True) for b in model.encoder.layers]
        final = ModelPart(model, ["encoder.ln", "heads"], _vit_head)
        make = lambda width: TokenHead(width, outputs(model.heads, model.encoder.ln), "token", 1)  # noqa: E731
    else:
        pieces = _vgg_pieces(model.features) if kind == "VGG" else list(_feature_pieces(model.features))
        pooling = ["avgpool"] if hasattr(model, "avgpool") else []  # MobileNetV2 pools functionally
        final = ModelPart(model, [*pooling, "classifier"], _convnext_head if kind == "ConvNeXt" else _pool_classify)
        make = lambda width: PoolHead(width, outputs(model.classifier, model.features))  # noqa: E731
    return vision_layout(model, family, pieces, final, make)


def outputs(classifier: nn.Module, trunk: nn.Module) -> int:
    """How many outputs the model's (possibly replaced) classifier gives, for earlier heads.

    Its last layer declaring a width (``nn.Sequential(nn.Dropout(p), nn.Linear(512, 10))``, a
    user's module ending in a linear layer); a classifier without parameters (``nn.Identity()``,
    to train on features with ``loss_fn=``) gives the trunk's width.
    """
    width = out_width(classifier)
    if width is None and not any(True for _ in classifier.parameters()):
        width = out_width(trunk)
    if width is None:
        raise ValueError(
            f"recede.wrap: cannot tell how many outputs the classifier "
            f"({type(classifier).__name__}) gives, to size the heads of earlier depths; "
            "pass head= (one module shared by every depth, or one per block)"
        )
    return width


def _torchvision_class(model: nn.Module) -> type | None:
    """The supported torchvision class in ``model``'s MRO, if ``model`` keeps its forward;
    ``None`` for another torchvision model (read by structure)."""
    for cls in type(model).__mro__:
        if cls.__name__ in SUPPORTED and cls.__module__.startswith("torchvision.models."):
            for method in ("forward", "_forward_impl"):
                if getattr(type(model), method, None) is not getattr(cls, method, None):
                    raise ValueError(
                        f"torchvision {type(model).__name__} overrides {cls.__name__}.{method}; "
                        "recede.wrap cannot tell its blocks apart"
                    )
            return cls
    return None


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
