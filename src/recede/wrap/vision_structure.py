"""Vision models outside the named architectures, read by structure and cut by the generic path.

torchvision Swin, RegNet, DenseNet, ShuffleNet and timm MobileViT-v2, BEiT, LeViT, RegNetY,
EfficientViT, EVA-02 (and any timm model following timm's trunk conventions) run their own
``forward``: recede names their blocks and :mod:`recede.wrap.generic` cuts the forward after
each, so the stem, the downsampling between stages (Swin's patch merging, DenseNet's
transitions, LeViT's attention downsampling) and the classifier path are the model's own code.

* **blocks** — torchvision: every module of a block class (:data:`TORCHVISION_BLOCKS`: Swin's
  transformer blocks, RegNet's bottlenecks, DenseNet's dense blocks, ShuffleNet's inverted
  residuals); timm: the children of ``blocks``, or each stage's blocks in ``stages`` (a
  stage's ``.blocks``, the children of an ``nn.Sequential`` stage) or in ``s1``, ``s2``, ...
* **final head** — the rest of the forward (final norm, pooling, classifier); the loss is
  cross-entropy on the model's output.
* **earlier heads** — :class:`~recede.wrap.heads.FeatureHead`: pool over every axis but the
  channel one, then a linear layer to the model's number of outputs; the widths are read from
  one shape-only forward (fake tensors) of an image of the model's size.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import nn

from recede.wrap import Layout
from recede.wrap.generic import RECIPE, generic_layout

TORCHVISION_BLOCKS = (
    "SwinTransformerBlock",
    "SwinTransformerBlockV2",
    "ResBottleneckBlock",
    "_DenseBlock",
    "InvertedResidual",
)


def torchvision_blocks(model: Any) -> list[str]:
    """The names of the modules of a torchvision block class, outermost only, in order."""
    names: list[str] = []
    for name, module in model.named_modules():
        if type(module).__name__ in TORCHVISION_BLOCKS and not any(name.startswith(f"{n}.") for n in names):
            names.append(name)
    return names


def timm_blocks(model: Any) -> list[str]:
    """The names of a timm model's blocks, from its ``blocks`` or its stages."""
    if isinstance(getattr(model, "blocks", None), (nn.ModuleList, nn.Sequential)):
        return [f"blocks.{n}" for n, _ in model.blocks.named_children()]
    if isinstance(getattr(model, "stages", None), (nn.ModuleList, nn.Sequential)):
        stages = [(f"stages.{n}", s) for n, s in model.stages.named_children()]
    else:
        stages = [
            (f"s{i}", getattr(model, f"s{i}"))
            for i in itertools.takewhile(
                lambda i: isinstance(getattr(model, f"s{i}", None), nn.Module), itertools.count(1)
            )
        ]
    names: list[str] = []
    for name, stage in stages:
        inner = getattr(stage, "blocks", None)
        if isinstance(inner, (nn.ModuleList, nn.Sequential)):
            names += [f"{name}.blocks.{n}" for n, _ in inner.named_children()]
        elif type(stage) is nn.Sequential or type(stage).__name__ == "RegStage":
            names += [f"{name}.{n}" for n, _ in stage.named_children()]
        else:
            names.append(name)
    return names


def structural_layout(model: Any, family: str, names: list[str]) -> Layout:
    """``model`` cut after the blocks ``names``, with cross-entropy as its loss."""
    if not names:
        raise ValueError(f"recede.wrap: found no blocks in {family}; name them with blocks=[...], or {RECIPE}")
    reference = next((p for p in model.parameters() if p.is_floating_point()), None)
    size = _image_size(model)
    example = torch.empty(1, 3, *size, dtype=reference.dtype if reference is not None else None)
    layout = generic_layout(model, names, example=example)
    layout.loss_fn = nn.CrossEntropyLoss()
    return layout


def _image_size(model: Any) -> tuple[int, int]:
    """The image size the model is built for (timm: its patch embedding's or its config's), else 224."""
    size = getattr(getattr(model, "patch_embed", None), "img_size", None) or getattr(model, "img_size", None)
    if size is None:
        size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size", (3, 224, 224))[1:]
    size = (size, size) if isinstance(size, int) else tuple(size)
    return (int(size[0]), int(size[1])) if len(size) == 2 else (224, 224)
