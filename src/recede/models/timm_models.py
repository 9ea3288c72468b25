"""Paper B's models from ``timm``: ResNet-50 and ViT-B/16, through :func:`recede.wrap`.

Paper B §6 fine-tunes a ResNet-50 (full and LoKr) and a ViT-B/16 (LoRA).  Each builder makes
the ``timm`` model with ``pretrained=False`` (nothing is ever downloaded; weights come from a
local file, :mod:`recede.models.weights`) and wraps it with :func:`recede.wrap`
(:mod:`recede.wrap.timm`): one block per bottleneck (3 + 4 + 6 + 3 = 16) or transformer block
(12), the stem or patch embedding with the first, timm's own classifier path at depth T.
"""

from __future__ import annotations

from torch import nn

from recede.core.blocks import BlockNet
from recede.models import register


def _wrapped(
    model: nn.Module, head: str, weights: str | None, adapter: str | None, rank: int, alpha: float
) -> BlockNet:
    """``model`` with local ``weights`` loaded, wrapped with ``head``, then adapted (Paper B: r = 1, α = 4)."""
    from recede.wrap import wrap

    if weights is not None:
        from recede.models.weights import load_weights

        load_weights(model, weights)
    net = wrap(model, head=head)
    if adapter is None:
        return net
    from recede.models.peft_adapters import apply_adapter

    return apply_adapter(net, adapter, r=rank, alpha=alpha)


@register("resnet50")
def resnet50(
    num_classes: int = 100,
    in_channels: int = 3,
    layers: tuple[int, ...] = (3, 4, 6, 3),
    channels: tuple[int, ...] = (64, 128, 256, 512),
    head: str = "independent",
    weights: str | None = None,
    adapter: str | None = None,
    adapter_rank: int = 1,
    adapter_alpha: float = 4.0,
) -> BlockNet:
    """timm ``resnet50`` (Paper B §6) as 16 bottleneck blocks.

    ``layers``/``channels`` shrink it for tests; ``head`` is :func:`recede.wrap`'s
    (``"independent"``, ``"group"``); ``weights`` is a local state-dict file
    (:func:`recede.models.weights.load_weights`); ``adapter="lokr"`` (or ``"lora"``) freezes
    the base weights and adds Paper B's r = 1, α = 4 adapters (:mod:`recede.models.peft_adapters`).
    """
    import timm

    if len(layers) != 4 or len(channels) != 4 or min(layers) < 1:
        raise ValueError(
            f"resnet50 has four stages: layers and channels need four entries (layers >= 1), "
            f"got layers={tuple(layers)}, channels={tuple(channels)}"
        )
    model = timm.create_model(
        "resnet50",
        pretrained=False,
        num_classes=num_classes,
        in_chans=in_channels,
        layers=tuple(layers),
        channels=tuple(channels),
    )
    return _wrapped(model, head, weights, adapter, adapter_rank, adapter_alpha)


@register("vit-b16")
def vit_b16(
    num_classes: int = 100,
    in_channels: int = 3,
    img_size: int = 224,
    patch_size: int = 16,
    embed_dim: int = 768,
    depth: int = 12,
    num_heads: int = 12,
    head: str = "independent",
    weights: str | None = None,
    adapter: str | None = None,
    adapter_rank: int = 1,
    adapter_alpha: float = 4.0,
) -> BlockNet:
    """timm ``vit_base_patch16_224`` (Paper B §6) as 12 transformer blocks.

    ``img_size``/``patch_size``/``embed_dim``/``depth``/``num_heads`` shrink it for tests;
    ``head`` is :func:`recede.wrap`'s (``"independent"``, ``"shared"``); ``weights`` is a local
    state-dict file; ``adapter="lora"`` adds Paper B's r = 1, α = 4 LoRA on the attention
    ``qkv`` projections and freezes the base weights.
    """
    import timm

    model = timm.create_model(
        "vit_base_patch16_224",
        pretrained=False,
        num_classes=num_classes,
        in_chans=in_channels,
        img_size=img_size,
        patch_size=patch_size,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
    )
    return _wrapped(model, head, weights, adapter, adapter_rank, adapter_alpha)
