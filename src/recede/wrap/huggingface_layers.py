"""Hugging Face transformers models by structure: any model whose layers are one ``ModuleList``.

Every transformers decoder (``*ForCausalLM``: Phi3, Gemma, Gemma2, OLMo, OLMo2, StableLM,
Falcon, GPTNeoX, ...), its ``*ForSequenceClassification`` and bare ``*Model`` variants, and
every encoder (RoBERTa, DistilBERT, ...) is an input stage, one ``ModuleList`` of
``config.num_hidden_layers`` layers of one class, and what follows them (a final norm, an LM
head, a pooler and classifier).  The classes differ in the glue: Gemma scales its embeddings,
Gemma2 soft-caps its logits, Falcon and GPT-NeoX run attention and MLP in parallel, each has
its own rotary module and mask function.  So recede does not restate any of it: the model is
cut at its layers by the generic path (:mod:`recede.wrap.generic`), its own forward computing
everything before, between and after them (called with ``use_cache=False``).

* **units** — one per layer; the embedding, mask and rotary computations ride with the first.
* **final head** — the rest of the model's forward; the prediction is its ``logits`` (bare
  models: ``last_hidden_state``).
* **loss** — the model's own: the shifted next-token loss for ``*ForCausalLM``
  (:func:`~recede.wrap.huggingface.next_token_loss`), and for ``*ForSequenceClassification``
  :class:`SequenceClassificationLoss`, which picks regression, single- or multi-label the way
  transformers does.  Bare models have none: pass ``loss_fn=`` (and ``head=``).
* **earlier heads** — LMs: ``"shared"`` (the default) is the final norm and LM head at every
  depth below T, ``"independent"`` a copy per depth; classifiers: a fresh
  :class:`~recede.wrap.heads.SequenceHead` per depth (first token for encoders, last for
  decoders, which pool the last token).

Encoder–decoder models (T5, BART) are refused: their decoder reads the encoder's output at
every layer, so they are not one chain; build the BlockNet by hand (docs/models.md).
GPT-2, Llama, Mistral, Qwen2/3 and BERT classifiers keep their own families
(:mod:`recede.wrap.huggingface`), which run without the generic path's worker thread.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from recede.wrap import Layout, register_family
from recede.wrap.generic import RECIPE, split_units
from recede.wrap.heads import SequenceHead
from recede.wrap.huggingface import NormAndHead, SequenceClassificationLoss, _copies, next_token_loss, unwrapped


def _is_transformers(model: Any) -> bool:
    kind = type(unwrapped(model))
    return kind.__module__.startswith("transformers.") and hasattr(unwrapped(model), "config")


def layer_list(model: Any) -> str:
    """The dotted name of the model's one ``ModuleList`` of ``num_hidden_layers`` layers of one class."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    count = getattr(config, "num_hidden_layers", None)
    lists = [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, nn.ModuleList) and len(m) > 0 and len({type(c) for c in m}) == 1
    ]
    matching = [n for n, m in lists if count is None or len(m) == count] or [n for n, _ in lists]
    if len(matching) != 1:
        found = ", ".join(n for n, _ in lists) or "none"
        raise ValueError(
            f"recede.wrap: cannot tell the layers of {type(model).__name__} (ModuleLists of "
            f"one class: {found}); name them with blocks='...', or {RECIPE}"
        )
    return matching[0]


def _caller(model: Any):
    """``call(model, x)``: ``x`` as ``input_ids`` (or a dict of the forward's keyword arguments),
    without a KV cache where the forward takes ``use_cache``."""
    takes_cache = "use_cache" in inspect.signature(model.forward).parameters

    def call(model: Any, x: Any) -> Any:
        kwargs = dict(x) if isinstance(x, dict) else {"input_ids": x}
        if takes_cache:
            kwargs.setdefault("use_cache", False)
        return model(**kwargs)

    return call


def _final_norm(model: Any, layers: str) -> nn.Module | None:
    """The norm the base model applies after its layers: its child registered after the layer
    list whose class name says it is a norm."""
    owner = model.get_submodule(layers.rpartition(".")[0]) if "." in layers else model
    after = False
    for child in owner.children():
        if child is model.get_submodule(layers):
            after = True
        elif after and "norm" in type(child).__name__.lower():
            return child
    return None


@register_family("transformers (by structure: embedding, ModuleList of layers, head)", _is_transformers)
def by_structure(model: Any) -> Layout:
    """Any transformers model whose layers form one ``ModuleList`` (see the module docstring)."""
    model = unwrapped(model)
    config, name = model.config, type(model).__name__
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(
            f"recede.wrap: {name} is an encoder-decoder (its decoder reads the encoder's "
            f"output at every layer), not one chain of blocks; {RECIPE}"
        )
    layers = layer_list(model)
    units, tail, _ = split_units(model, layers, call=_caller(model))
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    width: Any = getattr(text, "hidden_size", None)
    reference = next((p for p in model.parameters() if p.is_floating_point()), None)
    shared = None
    independent: Callable[[int], nn.Module] | None
    if name.endswith(("ForCausalLM", "LMHeadModel")):
        norm, lm_head = _final_norm(model, layers), model.get_output_embeddings()
        loss: Any = next_token_loss
        if norm is not None and lm_head is not None:
            shared = NormAndHead(norm, lm_head)
        independent = None if shared is None else _copies(shared)
        default = "shared" if shared is not None else "independent"
    elif name.endswith("ForSequenceClassification"):
        loss = SequenceClassificationLoss(config.num_labels, config.problem_type)
        token = "last" if hasattr(model, "score") else "first"

        def sequence_head(i: int) -> nn.Module:
            head = SequenceHead(width, config.num_labels, token)
            return head if reference is None else head.to(device=reference.device, dtype=reference.dtype)

        independent = sequence_head
        default = "independent"
    else:
        loss, independent, default = None, None, "independent"
    return Layout(
        units=list(units),
        final_head=tail,
        loss_fn=loss,
        independent_head=independent,
        default_head=default,
        earlier_shared=shared,
        own_final=True,
    )
