"""Parameter-efficient fine-tuning through ``peft``: LoRA and LoKr on a BlockNet.

Paper B §6 tunes ViT-B/16 with LoRA (Hu et al., 2022) on the attention projections and
ResNet-50 with LoKr (Kronecker-product adapters), both with rank r = 1 and α = 4.
:func:`apply_adapter` injects the adapters into the BlockNet in place with
``peft.inject_adapter_in_model``: peft swaps the targeted leaf layers (``qkv`` linears,
convolutions) inside the blocks, so every block, head and the BlockNet itself stay the same
module objects, and the engine (which reads ``requires_grad``) trains exactly what is left
trainable: the adapter weights and the heads.  Base weights are frozen, and so is a head weight
that a block also uses (GPT-2's LM head tied to the token embedding).  Hugging Face models are
adapted on their attention projections: GPT-2's ``c_attn`` (a transformers ``Conv1D``), the
``q_proj``/``k_proj``/``v_proj`` of the Llama layout, BERT's ``query``/``key``/``value``.  peft
swaps a layer in the parent it reaches through the BlockNet; a wrapped model
(:func:`recede.wrap`) may hold that layer under another parent too (its stem's ``conv1``), so
every such parent gets the adapter layer as well, and the user's model and the BlockNet stay one
model.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from recede.core.blocks import BlockNet

ADAPTERS = ("lora", "lokr")
ATTENTION_PROJECTIONS = ("qkv", "c_attn", "q_proj", "k_proj", "v_proj", "query", "key", "value")


def default_targets(net: BlockNet, kind: str) -> list[str]:
    """Paper B's targets: LoRA on every attention projection (:data:`ATTENTION_PROJECTIONS`:
    timm's ``qkv``, GPT-2's ``c_attn``, Llama's and BERT's q/k/v), LoKr on every block convolution.

    A transformer has no convolution but its patch embedding, so LoKr on a ViT targets its
    attention too; a network with neither gets LoRA/LoKr on every ``nn.Linear`` of its blocks.
    """
    names = [f"blocks.{n}" for n, m in net.blocks.named_modules() if n]
    qkv = [n for n in names if n.rsplit(".", 1)[-1] in ATTENTION_PROJECTIONS]
    convs = [n for n in names if isinstance(net.get_submodule(n), nn.Conv2d) and not n.endswith("patch_embed.proj")]
    linears = [n for n in names if isinstance(net.get_submodule(n), nn.Linear)]
    if kind == "lokr" and convs:
        return convs
    return qkv or linears


def apply_adapter(
    net: BlockNet,
    kind: str,
    r: int = 1,
    alpha: float = 4.0,
    target_modules: list[str] | None = None,
    dropout: float = 0.0,
) -> BlockNet:
    """Inject LoRA or LoKr adapters into ``net``'s blocks; freeze everything but adapters and
    the heads' own weights (a head weight tied to a block's stays frozen).

    Args:
        net: the block network (modified in place and returned).
        kind: ``"lora"`` or ``"lokr"``.
        r, alpha: rank and scale (Paper B: r = 1, α = 4).
        target_modules: module names (peft's matching: exact name or name suffix); default
            :func:`default_targets`.
        dropout: LoRA dropout / LoKr module dropout.
    """
    from peft import LoKrConfig, LoraConfig, inject_adapter_in_model

    if kind not in ADAPTERS:
        raise ValueError(f"adapter must be one of {ADAPTERS}, got {kind!r}")
    if r < 1:
        raise ValueError(f"adapter rank r must be >= 1, got {r}")
    targets = target_modules or default_targets(net, kind)
    if not targets:
        raise ValueError("no module to adapt: the blocks have no qkv, convolution or linear layer")
    if kind == "lora":
        matched = [m for n, m in net.named_modules() if any(n == t or n.endswith("." + t) for t in targets)]
        conv1d = bool(matched) and all(type(m).__name__ == "Conv1D" for m in matched)  # (in, out) weights
        config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, fan_in_fan_out=conv1d)
    else:
        config = LoKrConfig(r=r, alpha=alpha, module_dropout=dropout, target_modules=targets)
    inject_adapter_in_model(config, net)
    _share_replacements(net)
    prefix = f"{kind}_"
    for name, p in net.named_parameters():
        p.requires_grad_(prefix in name)
    in_blocks = {id(p) for p in net.blocks.parameters()}
    for p in net.heads.parameters():
        p.requires_grad_(id(p) not in in_blocks)
    return net


def _share_replacements(net: BlockNet) -> None:
    """Make every parent of a layer peft replaced, in the BlockNet or a wrapped model, hold its adapter."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from recede.wrap.vision import ModelPart

    adapted = {id(m.get_base_layer()): m for m in net.modules() if isinstance(m, BaseTunerLayer)}
    roots: list[Any] = [net, *{id(m.model): m.model for m in net.modules() if isinstance(m, ModelPart)}.values()]
    stale = [
        (parent, name, adapted[id(child)])
        for root in roots
        for parent in root.modules()
        for name, child in parent.named_children()
        if id(child) in adapted and parent is not adapted[id(child)]
    ]
    for parent, name, layer in stale:
        setattr(parent, name, layer)


def adapter_parameters(net: nn.Module) -> dict[str, nn.Parameter]:
    """The LoRA/LoKr parameters of ``net`` by name."""
    return {n: p for n, p in net.named_parameters() if any(f"{k}_" in n for k in ADAPTERS)}
