"""Paper B's models from ``timm``: ResNet-50 and ViT-B/16 as block networks.

Paper B §6 fine-tunes a ResNet-50 (full and LoKr) and a ViT-B/16 (LoRA).  Here the ``timm``
model is built with ``pretrained=False`` (nothing is ever downloaded; weights come from a local
file, :mod:`recede.models.weights`) and split into the blocks the horizon counts (Paper B eq. 1):

* ResNet-50: one block per bottleneck (3 + 4 + 6 + 3 = 16); the stem (conv, BN, ReLU, max-pool)
  travels with the first bottleneck.
* ViT-B/16: one block per transformer block (12); patch embedding, class token and position
  embedding travel with the first.

The blocks are timm's own modules, held, not copied, so the BlockNet and the timm model share
every parameter.  The head at depth T is timm's own classifier path (ResNet: global pool →
dropout → fc; ViT: final norm → token pool → fc_norm → dropout → head), so at h = T the
engine's gradients are those of plain back-propagation through the timm model.  Earlier depths
get pool → linear heads (Paper B App. A): ``head="independent"`` gives each depth its own,
``"stage"`` (ResNet) shares one among the bottlenecks of a stage (their widths agree; the
last stage shares timm's classifier), ``"shared"`` (ViT, all widths agree) uses timm's
classifier path at every depth.
"""

from __future__ import annotations

import torch
from torch import nn

from recede.blocks import BlockNet
from recede.models import register
from recede.models.resnet import PoolHead


class ResNetStem(nn.Module):
    """timm ResNet's stem, ``maxpool(act1(bn1(conv1(x))))``, holding timm's own modules."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.conv1, self.bn1, self.act1, self.maxpool = model.conv1, model.bn1, model.act1, model.maxpool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.act1(self.bn1(self.conv1(x))))


class StemAndBlock(nn.Module):
    """The first block: an input stage (stem or embedding) followed by the first timm block."""

    def __init__(self, stem: nn.Module, block: nn.Module) -> None:
        super().__init__()
        self.stem, self.block = stem, block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.stem(x))


class ViTEmbedding(nn.Module):
    """timm ViT's input stage: patch embedding, class token, position embedding, dropouts, pre-norm.

    Holds the ViT's own modules and parameters (the same ``nn.Parameter`` objects) and follows
    ``VisionTransformer._pos_embed`` for the standard layout (position embedding covers the
    class token); other layouts are refused by :func:`wrap_vit`.
    """

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.patch_embed, self.pos_drop = vit.patch_embed, vit.pos_drop
        self.patch_drop, self.norm_pre = vit.patch_drop, vit.norm_pre
        self.cls_token, self.pos_embed = vit.cls_token, vit.pos_embed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.pos_drop(x + self.pos_embed)
        return self.norm_pre(self.patch_drop(x))


class ViTHead(nn.Module):
    """timm ViT's classifier path: ``head(drop(fc_norm(pool(norm(x)))))``."""

    def __init__(self, norm: nn.Module, fc_norm: nn.Module, drop: nn.Module, head: nn.Module,
                 pool_type: str, num_prefix_tokens: int, pool_include_prefix: bool) -> None:
        super().__init__()
        self.norm, self.fc_norm, self.drop, self.head = norm, fc_norm, drop, head
        self.pool_type, self.num_prefix_tokens = pool_type, num_prefix_tokens
        self.pool_include_prefix = pool_include_prefix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from timm.layers import global_pool_nlc

        x = global_pool_nlc(self.norm(x), pool_type=self.pool_type, num_prefix_tokens=self.num_prefix_tokens,
                            reduce_include_prefix=self.pool_include_prefix)
        return self.head(self.drop(self.fc_norm(x)))


def _like(head: nn.Module, model: nn.Module) -> nn.Module:
    """A new head on the device and in the dtype of ``model``'s parameters."""
    ref = next(model.parameters())
    return head.to(device=ref.device, dtype=ref.dtype)


def _check_head(head: str, allowed: tuple[str, ...]) -> None:
    if head not in allowed:
        raise ValueError(f"head must be one of {allowed}, got {head!r}")


def wrap_resnet(model: nn.Module, head: str = "independent",
                loss_fn: nn.Module | None = None) -> BlockNet:
    """A timm ``ResNet`` as one block per residual block, the stem with the first.

    Args:
        model: a ``timm.models.resnet.ResNet`` (any depth, Bottleneck or BasicBlock).
        head: ``"independent"`` (a pool → linear head per depth) or ``"stage"`` (one per stage;
            the last stage uses timm's classifier).  Depth T always uses timm's classifier.
        loss_fn: defaults to cross-entropy.
    """
    _check_head(head, ("independent", "stage"))
    if not hasattr(model, "layer4") or not hasattr(model, "global_pool"):
        raise ValueError(f"wrap_resnet needs a timm ResNet, got {type(model).__name__}")
    final = nn.Sequential(model.global_pool, nn.Dropout(float(model.drop_rate)), model.fc)
    stages = [model.layer1, model.layer2, model.layer3, model.layer4]
    blocks: list[nn.Module] = []
    heads: list[nn.Module] = []
    for s, stage in enumerate(stages):
        width = model.feature_info[s + 1]["num_chs"]
        last_stage = s == len(stages) - 1
        stage_head = final if last_stage else _like(PoolHead(width, model.num_classes), model)
        for b, block in enumerate(stage):
            blocks.append(StemAndBlock(ResNetStem(model), block) if s == 0 and b == 0 else block)
            heads.append(stage_head if head == "stage" else _like(PoolHead(width, model.num_classes), model))
    heads[-1] = final
    return BlockNet(blocks, heads, loss_fn or nn.CrossEntropyLoss())


def wrap_vit(model: nn.Module, head: str = "independent",
             loss_fn: nn.Module | None = None) -> BlockNet:
    """A timm ``VisionTransformer`` as one block per transformer block, the embedding with the first.

    Args:
        model: a ``timm.models.vision_transformer.VisionTransformer`` with a learned absolute
            position embedding that covers the class token (ViT-B/16's layout).
        head: ``"independent"`` (norm → pool → linear per depth) or ``"shared"`` (timm's
            classifier path at every depth).  Depth T always uses timm's classifier.
        loss_fn: defaults to cross-entropy.
    """
    _check_head(head, ("independent", "shared"))
    unsupported = [name for name, bad in (
        ("register tokens", getattr(model, "reg_token", None) is not None),
        ("dynamic image size", getattr(model, "dynamic_img_size", False)),
        ("no_embed_class", getattr(model, "no_embed_class", False)),
        ("no position embedding", getattr(model, "pos_embed", None) is None),
        ("attention pooling", getattr(model, "attn_pool", None) is not None)) if bad]
    if not hasattr(model, "patch_embed") or unsupported:
        raise ValueError(f"wrap_vit needs a standard timm VisionTransformer; unsupported: "
                         f"{unsupported or type(model).__name__}")
    pool = dict(pool_type=model.global_pool, num_prefix_tokens=model.num_prefix_tokens,
                pool_include_prefix=model.pool_include_prefix)
    final = ViTHead(model.norm, model.fc_norm, model.head_drop, model.head, **pool)
    blocks = [StemAndBlock(ViTEmbedding(model), model.blocks[0]), *model.blocks[1:]]
    if head == "shared":
        return BlockNet(blocks, final, loss_fn or nn.CrossEntropyLoss())
    width = model.embed_dim
    heads = [_like(ViTHead(nn.LayerNorm(width, eps=1e-6), nn.Identity(), nn.Identity(),
                           nn.Linear(width, model.num_classes), **pool), model) for _ in blocks[:-1]]
    return BlockNet(blocks, [*heads, final], loss_fn or nn.CrossEntropyLoss())


@register("resnet50")
def resnet50(num_classes: int = 100, in_channels: int = 3, layers: tuple[int, ...] = (3, 4, 6, 3),
             channels: tuple[int, ...] = (64, 128, 256, 512), head: str = "independent",
             weights: str | None = None, adapter: str | None = None, adapter_rank: int = 1,
             adapter_alpha: float = 4.0) -> BlockNet:
    """timm ``resnet50`` (Paper B §6) as 16 bottleneck blocks.

    ``layers``/``channels`` shrink it for tests; ``weights`` is a local state-dict file
    (:func:`recede.models.weights.load_weights`); ``adapter="lokr"`` (or ``"lora"``) freezes
    the base weights and adds Paper B's r = 1, α = 4 adapters (:mod:`recede.models.peft_adapters`).
    """
    import timm

    _check_head(head, ("independent", "stage"))
    if len(layers) != 4 or len(channels) != 4 or min(layers) < 1:
        raise ValueError(f"resnet50 has four stages: layers and channels need four entries (layers >= 1), "
                         f"got layers={tuple(layers)}, channels={tuple(channels)}")
    model = timm.create_model("resnet50", pretrained=False, num_classes=num_classes,
                              in_chans=in_channels, layers=tuple(layers), channels=tuple(channels))
    if weights is not None:
        from recede.models.weights import load_weights

        load_weights(model, weights)
    return _with_adapter(wrap_resnet(model, head), adapter, adapter_rank, adapter_alpha)


@register("vit-b16")
def vit_b16(num_classes: int = 100, in_channels: int = 3, img_size: int = 224, patch_size: int = 16,
            embed_dim: int = 768, depth: int = 12, num_heads: int = 12, head: str = "independent",
            weights: str | None = None, adapter: str | None = None, adapter_rank: int = 1,
            adapter_alpha: float = 4.0) -> BlockNet:
    """timm ``vit_base_patch16_224`` (Paper B §6) as 12 transformer blocks.

    ``img_size``/``patch_size``/``embed_dim``/``depth``/``num_heads`` shrink it for tests;
    ``weights`` is a local state-dict file; ``adapter="lora"`` adds Paper B's r = 1, α = 4
    LoRA on the attention ``qkv`` projections and freezes the base weights.
    """
    import timm

    _check_head(head, ("independent", "shared"))
    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=num_classes,
                              in_chans=in_channels, img_size=img_size, patch_size=patch_size,
                              embed_dim=embed_dim, depth=depth, num_heads=num_heads)
    if weights is not None:
        from recede.models.weights import load_weights

        load_weights(model, weights)
    return _with_adapter(wrap_vit(model, head), adapter, adapter_rank, adapter_alpha)


def _with_adapter(net: BlockNet, adapter: str | None, rank: int, alpha: float) -> BlockNet:
    if adapter is None:
        return net
    from recede.models.peft_adapters import apply_adapter

    return apply_adapter(net, adapter, r=rank, alpha=alpha)
