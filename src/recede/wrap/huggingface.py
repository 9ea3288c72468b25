"""Hugging Face transformers: causal LMs (GPT-2, the Llama/Mistral/Qwen decoder) and BERT classifiers.

Each model is read as the chain Paper A eq. 1 asks for, with the model's own modules (held,
not copied):

* **units** — the transformer layers (``GPT2Block``, ``LlamaDecoderLayer`` and the same layout in
  Mistral and Qwen2/3, ``BertLayer``).  The input stage rides with the first: token + position
  embeddings and dropout (GPT-2), token embeddings (Llama), BERT's embeddings module.
  Between units only the hidden states pass (a tensor); what a layer also needs is recomputed
  inside each unit exactly as the model's own forward computes it: position ids
  ``0..S-1``, the attention mask from the model's own mask function for that layer (``None``
  for SDPA without padding, a causal or sliding-window mask otherwise) and the rotary
  ``(cos, sin)`` from the model's own rotary module.
* **final head** — the model's own path to its prediction: final norm → LM head (GPT-2:
  ``ln_f`` and the LM head tied to the token embedding), BERT's pooler → dropout → classifier.
* **loss** — the model's own: the shifted next-token cross-entropy of a causal LM
  (:func:`next_token_loss`, what ``model(ids, labels=ids).loss`` computes) and, on BERT's
  pooled output, cross-entropy, MSE or multi-label BCE, chosen as transformers chooses it.  So the data are
  ``x = ids`` (B, S) and, for
  an LM, ``y = ids`` as well.
* **heads at earlier depths** (Paper B App. A) — ``"shared"``: the final head at every depth
  (for an LM: the final norm and the tied LM head; the LM default); ``"independent"``: a copy
  of the final head per depth, with its own parameters (BERT's default).

A peft model (``get_peft_model(model, LoraConfig(...))``) is wrapped as the model inside it,
with peft's adapters and frozen weights as they are.  Padding masks are not supported: every token attends to
every (earlier) token, as in a
stream of packed text.  Whatever attention implementation the model was built with (eager,
SDPA, ...) is used; SDPA and eager both run in float64 on CPU.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from recede.wrap import Layout, register_family

CAUSAL_DECODERS = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")


def unwrapped(model: nn.Module) -> Any:
    """A peft model's transformers model (``get_peft_model`` injects its adapters in place and
    freezes the base weights), else ``model`` itself."""
    base = getattr(model, "get_base_model", None)
    return base() if type(model).__module__.startswith("peft.") and callable(base) else model


def _is(model: nn.Module, *names: str) -> bool:
    """``model`` (or the model inside a peft model) is a transformers class of one of ``names``,
    checked without importing transformers."""
    kind = type(unwrapped(model))
    return kind.__module__.startswith("transformers.") and kind.__name__ in names


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean cross-entropy of predicting token s+1 from positions ≤ s (labels are shifted here).

    The loss of ``model(ids, labels=ids)`` for a transformers causal LM (``ForCausalLMLoss``):
    logits of positions 0..S-2 against labels 1..S-1, ``ignore_index`` labels skipped.  Like
    that loss it is computed in at least float32 (bf16/fp16 logits are upcast), but float64
    logits stay float64.
    """
    logits = logits[:, :-1].to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=ignore_index)


def first(state: torch.Tensor | tuple) -> torch.Tensor:
    """The hidden states in a layer's output: the tensor itself, or the first item of the tuple
    some layers return (Falcon's ``(hidden, attention)``)."""
    return state if isinstance(state, torch.Tensor) else state[0]


def _positions(hidden: torch.Tensor) -> torch.Tensor:
    return torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)


class GPT2Embedding(nn.Module):
    """GPT-2's input stage, ``drop(wte(ids) + wpe(0..S-1))``, with the model's own modules."""

    def __init__(self, transformer: Any) -> None:
        super().__init__()
        self.wte, self.wpe, self.drop = transformer.wte, transformer.wpe, transformer.drop

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        hidden = self.wte(ids)
        return self.drop(hidden + self.wpe(_positions(hidden)))


class TokenEmbedding(nn.Module):
    """The Llama-layout input stage: the token embedding alone (positions are rotary)."""

    def __init__(self, embed_tokens: nn.Module) -> None:
        super().__init__()
        self.embed_tokens = embed_tokens

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(ids)


class CausalLayer(nn.Module):
    """One decoder layer as a tensor-to-tensor unit.

    Computes what the model's forward hands the layer: position ids, the causal (or
    sliding-window) mask of this layer from the model's own mask function, and, when the model
    has a rotary module (held, shared by every unit), its ``(cos, sin)``.
    """

    def __init__(self, layer: nn.Module, config, sliding: bool, rotary: nn.Module | None = None) -> None:
        super().__init__()
        self.layer, self.rotary, self.config, self.sliding = layer, rotary, config, sliding

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

        positions = _positions(hidden)
        make_mask = create_sliding_window_causal_mask if self.sliding else create_causal_mask
        mask = make_mask(
            config=self.config, inputs_embeds=hidden, attention_mask=None, cache=None, position_ids=positions
        )
        extra = {} if self.rotary is None else {"position_embeddings": self.rotary(hidden, positions)}
        return self.layer(hidden, attention_mask=mask, position_ids=positions, **extra)


class NormAndHead(nn.Module):
    """``head(norm(x))``: an LM's final norm and (tied) LM head (``x``: hidden states, or a layer's
    output tuple whose first item they are)."""

    def __init__(self, norm: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.norm, self.head = norm, head

    def forward(self, hidden: torch.Tensor | tuple) -> torch.Tensor:
        return self.head(self.norm(first(hidden)))


def _copies(final: nn.Module):
    """``independent_head(i)``: a copy of the final head with its own parameters."""
    return lambda i: copy.deepcopy(final)


def _lm_layout(embedding: nn.Module, layers: Sequence[nn.Module], final: nn.Module) -> Layout:
    return Layout(
        units=[nn.Sequential(embedding, layers[0]), *layers[1:]],
        final_head=final,
        loss_fn=next_token_loss,
        independent_head=_copies(final),
        shareable=True,
        default_head="shared",
    )


@register_family("transformers GPT2LMHeadModel", lambda m: _is(m, "GPT2LMHeadModel"))
def gpt2(model: Any) -> Layout:
    """GPT-2: one unit per ``GPT2Block``, token + position embedding with the first;
    ``ln_f`` → tied LM head; the shifted next-token loss."""
    model = unwrapped(model)
    transformer = model.transformer
    if model.config.add_cross_attention:
        raise ValueError("recede.wrap: GPT-2 with cross-attention needs encoder states; not supported")
    layers = [CausalLayer(block, model.config, sliding=False) for block in transformer.h]
    return _lm_layout(GPT2Embedding(transformer), layers, NormAndHead(transformer.ln_f, model.lm_head))


def _sliding(config, index: int) -> bool:
    """Whether decoder layer ``index`` uses a sliding-window mask in its model's own forward:
    Qwen names it per layer (``layer_types``), Mistral for every layer (``sliding_window``)."""
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return layer_types[index] == "sliding_attention"
    return getattr(config, "sliding_window", None) is not None


@register_family("transformers Llama/Mistral/Qwen ForCausalLM", lambda m: _is(m, *CAUSAL_DECODERS))
def causal_decoder(model: Any) -> Layout:
    """The Llama layout: one unit per decoder layer, token embedding with the first, rotary
    positions recomputed in each unit; final RMSNorm → LM head; the shifted next-token loss."""
    model = unwrapped(model)
    base = model.model
    layers = [
        CausalLayer(layer, model.config, _sliding(model.config, i), base.rotary_emb)
        for i, layer in enumerate(base.layers[: model.config.num_hidden_layers])
    ]
    return _lm_layout(TokenEmbedding(base.embed_tokens), layers, NormAndHead(base.norm, model.lm_head))


class BertLayerUnit(nn.Module):
    """One ``BertLayer`` with the model's own (bidirectional, no padding) attention mask."""

    def __init__(self, layer: nn.Module, config) -> None:
        super().__init__()
        self.layer, self.config = layer, config

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        from transformers.masking_utils import create_bidirectional_mask

        mask = create_bidirectional_mask(config=self.config, inputs_embeds=hidden, attention_mask=None)
        return self.layer(hidden, attention_mask=mask)


class BertClassifierHead(nn.Module):
    """BERT's classification path: ``classifier(dropout(pooler(x)))``."""

    def __init__(self, pooler: nn.Module, dropout: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.pooler, self.dropout, self.classifier = pooler, dropout, classifier

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.pooler(hidden)))


class SequenceClassificationLoss:
    """The loss of a transformers ``*ForSequenceClassification`` model given ``labels``.

    ``config.problem_type`` if set; otherwise, as transformers infers it per call: regression
    for one label, single-label cross-entropy for integer labels, multi-label BCE-with-logits
    for float (multi-hot) labels.
    """

    def __init__(self, num_labels: int, problem_type: str | None) -> None:
        self.num_labels, self.problem_type = num_labels, problem_type

    def kind(self, labels: torch.Tensor) -> str:
        if self.problem_type is not None:
            return self.problem_type
        if self.num_labels == 1:
            return "regression"
        integer = labels.dtype in (torch.long, torch.int, torch.int16, torch.int8, torch.uint8)
        return "single_label_classification" if integer else "multi_label_classification"

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        kind = self.kind(labels)
        if kind == "regression":
            if self.num_labels == 1:
                return F.mse_loss(logits.squeeze(), labels.squeeze())
            return F.mse_loss(logits, labels)
        if kind == "single_label_classification":
            return F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        if kind == "multi_label_classification":
            return F.binary_cross_entropy_with_logits(logits, labels)
        raise ValueError(f"recede.wrap: unknown problem_type {kind!r} in the model's config")


@register_family("transformers BertForSequenceClassification", lambda m: _is(m, "BertForSequenceClassification"))
def bert(model: Any) -> Layout:
    """BERT: one unit per ``BertLayer``, embeddings with the first; pooler → dropout →
    classifier; the model's own loss (:class:`SequenceClassificationLoss`).  Independent heads
    by default."""
    model = unwrapped(model)
    config = model.config
    if config.is_decoder:
        raise ValueError("recede.wrap: BERT as a decoder is not supported; wrap an encoder classifier")
    layers = [BertLayerUnit(layer, config) for layer in model.bert.encoder.layer]
    final = BertClassifierHead(model.bert.pooler, model.dropout, model.classifier)
    return Layout(
        units=[nn.Sequential(model.bert.embeddings, layers[0]), *layers[1:]],
        final_head=final,
        loss_fn=SequenceClassificationLoss(config.num_labels, config.problem_type),
        independent_head=_copies(final),
        shareable=True,
        default_head="independent",
    )
