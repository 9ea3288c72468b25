"""Transformer language models from Hugging Face configs: ``gpt2`` and ``llama``.

Each is built from its config alone (``GPT2Config``, ``LlamaConfig``: nothing is downloaded;
pretrained weights come from a local file, :mod:`recede.models.weights`) and turned into a
BlockNet by :func:`recede.wrap`: one block per decoder layer (or ``blocks`` groups), the
embedding riding with the first, heads at earlier depths that are the final norm and the
tied LM head shared across depths (``head="shared"``, Paper B App. A) or a copy per depth
(``"independent"``), and the shifted next-token loss.  The vocabulary and the context length
default to the text task's (:mod:`recede.data.text`).  Attention runs through PyTorch's SDPA
by default (``attention="eager"``: the explicit softmax, whose saved attention weights grow as
S²); both are exact in float64.  ``adapter="lora"`` freezes the base weights and adds LoRA to the
attention projections (:mod:`recede.models.peft_adapters`; rank 8, α = 16, the usual LoRA
setting for language models, unlike Paper B's r = 1 for vision); the tied embedding stays frozen.
"""

from __future__ import annotations

from torch import nn

from recede.core.blocks import BlockNet
from recede.models import register

GPT2_PRESETS = {"tiny": dict(n_layer=4, n_embd=128, n_head=4), "small": dict(n_layer=12, n_embd=768, n_head=12)}
ATTENTION = ("sdpa", "eager")  # PyTorch's fused attention (O(S) saved memory) or the explicit one (O(S²))
LLAMA_PRESETS = {
    "tiny": dict(n_layer=4, hidden_size=128, n_head=4, n_kv_head=2, intermediate_size=352),
    "small": dict(n_layer=12, hidden_size=768, n_head=12, n_kv_head=4, intermediate_size=2048),
}


def _attention(name: str) -> str:
    if name not in ATTENTION:
        raise ValueError(f"attention must be one of {ATTENTION}, got {name!r}")
    return name


def _preset(presets: dict[str, dict], name: str, chosen: dict[str, object]) -> dict[str, object]:
    """The preset's values, overridden by every option given (not None); each at least 1."""
    if name not in presets:
        raise ValueError(f"preset must be one of {sorted(presets)}, got {name!r}")
    sizes = presets[name] | {k: v for k, v in chosen.items() if v is not None}
    bad = [f"{k}={v}" for k, v in sizes.items() if v < 1]
    if bad:
        raise ValueError(f"model sizes must be at least 1, got {', '.join(bad)}")
    return sizes


def _finish(
    model: nn.Module,
    blocks: int | None,
    head: str,
    weights: str | None,
    adapter: str | None,
    adapter_rank: int,
    adapter_alpha: float,
) -> BlockNet:
    from recede.wrap import wrap

    if weights is not None:
        from recede.models.weights import load_weights

        load_weights(model, weights)
    net = wrap(model, blocks=blocks, head=head)
    if adapter is None:
        return net
    from recede.models.peft_adapters import apply_adapter

    return apply_adapter(net, adapter, r=adapter_rank, alpha=adapter_alpha)


@register("gpt2")
def gpt2(
    vocab_size: int = 256,
    n_positions: int = 1024,
    preset: str = "tiny",
    n_layer: int | None = None,
    n_embd: int | None = None,
    n_head: int | None = None,
    dropout: float = 0.0,
    blocks: int | None = None,
    head: str = "shared",
    attention: str = "sdpa",
    weights: str | None = None,
    adapter: str | None = None,
    adapter_rank: int = 8,
    adapter_alpha: float = 16.0,
) -> BlockNet:
    """GPT-2 (``GPT2LMHeadModel``) with a tied LM head.

    ``preset`` ``"tiny"`` is 4 layers of width 128 with 4 heads; ``"small"`` is GPT-2 small
    (12 × 768, 12 heads); ``n_layer``/``n_embd``/``n_head`` override it.  ``dropout`` is used
    for the embedding, residual and attention dropouts (GPT-2's own is 0.1).  ``attention`` is the
    transformers attention implementation (:data:`ATTENTION`).
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    sizes = _preset(GPT2_PRESETS, preset, dict(n_layer=n_layer, n_embd=n_embd, n_head=n_head))
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=n_positions,
        **sizes,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        bos_token_id=None,
        eos_token_id=None,
        attn_implementation=_attention(attention),
    )
    return _finish(GPT2LMHeadModel(config), blocks, head, weights, adapter, adapter_rank, adapter_alpha)


@register("llama")
def llama(
    vocab_size: int = 256,
    n_positions: int = 2048,
    preset: str = "tiny",
    n_layer: int | None = None,
    hidden_size: int | None = None,
    n_head: int | None = None,
    n_kv_head: int | None = None,
    intermediate_size: int | None = None,
    tie_embeddings: bool = True,
    blocks: int | None = None,
    head: str = "shared",
    attention: str = "sdpa",
    weights: str | None = None,
    adapter: str | None = None,
    adapter_rank: int = 8,
    adapter_alpha: float = 16.0,
) -> BlockNet:
    """A Llama decoder (``LlamaForCausalLM``: RMSNorm, rotary positions, SwiGLU, grouped-query
    attention), the LM head tied to the embedding unless ``tie_embeddings=False``.

    ``preset`` ``"tiny"``: 4 layers, width 128, 4 query / 2 key-value heads; ``"small"``:
    12 × 768, 12 / 4 heads; the size options override it.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    sizes = _preset(
        LLAMA_PRESETS,
        preset,
        dict(
            n_layer=n_layer,
            hidden_size=hidden_size,
            n_head=n_head,
            n_kv_head=n_kv_head,
            intermediate_size=intermediate_size,
        ),
    )
    config = LlamaConfig(
        vocab_size=vocab_size,
        max_position_embeddings=n_positions,
        num_hidden_layers=sizes["n_layer"],
        hidden_size=sizes["hidden_size"],
        num_attention_heads=sizes["n_head"],
        num_key_value_heads=sizes["n_kv_head"],
        intermediate_size=sizes["intermediate_size"],
        tie_word_embeddings=tie_embeddings,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        attn_implementation=_attention(attention),
    )
    return _finish(LlamaForCausalLM(config), blocks, head, weights, adapter, adapter_rank, adapter_alpha)
