"""The Hugging Face ``Trainer`` with a receding horizon: :class:`RecedeTrainer`.

``RecedeTrainer(model, args, horizon=2, ...)`` is a ``transformers.Trainer`` whose
``training_step`` runs :class:`recede.MPC` (or :class:`recede.BPModified`) on
``recede.wrap(model)`` instead of ``model(**inputs).loss`` and ``accelerator.backward``.  The
rest is the stock Trainer: optimizer and lr scheduler, ``max_grad_norm`` clipping, logging,
evaluation (the model's own forward), ``save_steps`` checkpoints and
``resume_from_checkpoint``, peft models, data collators.

The step mirrors the stock one, so at ``horizon = T`` the losses and weights are the stock
Trainer's on the same seed (bitwise in fp32 on CPU, ``tests/test_integrations_transformers.py``):

* the loss is the model's own: a causal LM's ``model.loss_function`` (given
  ``num_items_in_batch`` when the Trainer passes it, i.e. the loss normalised over the whole
  accumulated batch), otherwise the loss :func:`recede.wrap` gives the family;
* gradient accumulation divides each loss by the micro-batches of the step exactly when the
  stock step does (``loss_is_scaled_for_ga``), as ``(loss / n).backward()`` would;
* bf16/fp16 run under ``accelerator.autocast()`` with the accelerator's GradScaler, if any;
* the returned (logged) loss is L(x_T), divided as the stock step divides it.

A batch is ``inputs["input_ids"]`` (or ``"pixel_values"``) and ``inputs["labels"]``; pass
``inputs=`` a function ``batch -> (x, y)`` for anything else.  Refused in one line: padded
batches (an ``attention_mask`` with zeros; recede.wrap's models attend to every token), other
model inputs (``position_ids``...), label smoothing and ``compute_loss_func`` (the loss is the
model's own), more than one process (DDP, DeepSpeed, FSDP), and a peft model with heads that
add parameters (peft checkpoints hold the adapters only).  New heads (``head="independent"``)
of a plain model are kept in the model as ``model.recede_heads``, so the Trainer's optimizer,
checkpoints and resume carry them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from transformers import Trainer

from recede.integrations import build_method, new_head_modules, weighted_backward
from recede.wrap import wrap
from recede.wrap.huggingface import unwrapped

IGNORED_IF_TRIVIAL = ("attention_mask", "token_type_ids")
INPUT_KEYS = ("input_ids", "pixel_values")


def batch_to_xy(inputs: dict[str, Any]) -> tuple[Any, Any]:
    """``(x, y)`` of a Trainer batch: ``input_ids`` (or ``pixel_values``) and ``labels``.

    An ``attention_mask`` of ones and ``token_type_ids`` of zeros are what the wrapped model
    computes anyway; anything else is refused in one line."""
    if not isinstance(inputs, Mapping):
        raise ValueError(
            f"RecedeTrainer: a batch must be a dict of tensors, got {type(inputs).__name__}; "
            "pass inputs=lambda batch: (x, y)"
        )
    mask = inputs.get("attention_mask")
    if mask is not None and not bool(mask.bool().all()):
        raise ValueError(
            "RecedeTrainer: padded batch (attention_mask has zeros) is not supported: "
            "recede.wrap's models attend to every token; pack texts into full-length "
            "sequences (no padding) or use the stock Trainer"
        )
    types = inputs.get("token_type_ids")
    if types is not None and bool(types.any()):
        raise ValueError("RecedeTrainer: token_type_ids other than 0 are not supported")
    keys = [k for k in INPUT_KEYS if k in inputs]
    other = sorted(set(inputs) - set(INPUT_KEYS) - set(IGNORED_IF_TRIVIAL) - {"labels"})
    if len(keys) != 1 or "labels" not in inputs or other:
        raise ValueError(
            f"RecedeTrainer: a batch needs one of {INPUT_KEYS} and labels, and nothing "
            f"else the model would read; got {sorted(inputs)}; pass inputs=lambda batch: (x, y)"
        )
    return inputs[keys[0]], inputs["labels"]


class RecedeTrainer(Trainer):
    """``transformers.Trainer`` training with a receding horizon (see the module docstring).

    Args:
        model: a model :func:`recede.wrap` accepts (also inside a peft model).
        args: ``TrainingArguments``.
        horizon: h in [1, T] (``None``: T, exact BP).
        bp_modified: options of :class:`recede.BPModified` (``period``, ``offset_samples``,
            ``micro_batch``, ``rule``...); its refresh samples come from ``train_dataset``
            through the data collator unless ``data`` is given.
        blocks, head: as in :func:`recede.wrap`.
        inputs: ``batch -> (x, y)``; default :func:`batch_to_xy`.
        **kwargs: the other arguments of ``transformers.Trainer``.
    """

    def __init__(
        self,
        model: nn.Module,
        args: Any = None,
        *,
        horizon: int | None = None,
        bp_modified: dict[str, Any] | None = None,
        blocks: int | None = None,
        head: Any = "auto",
        inputs: Callable[[dict[str, Any]], tuple[Any, Any]] | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("compute_loss_func") is not None:
            raise ValueError(
                "RecedeTrainer: compute_loss_func is not supported; the loss is the model's own "
                "(or pass loss_fn through recede.wrap by subclassing)"
            )
        self.recede_net = wrap(model, blocks=blocks, head=head)
        heads = new_head_modules(self.recede_net, model)
        if heads:
            if type(model).__module__.startswith("peft."):
                raise ValueError(
                    "RecedeTrainer: a peft model saves only its adapters, so the new heads of "
                    f"head={head!r} would not be checkpointed; use head='shared' or give "
                    "heads with no new parameters"
                )
            model.add_module("recede_heads", nn.ModuleList(heads))
        self.recede_inputs = inputs or batch_to_xy
        super().__init__(model=model, args=args, **kwargs)
        if self.args.label_smoothing_factor:
            raise ValueError("RecedeTrainer: label smoothing is not supported; the loss is the model's own")
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise ValueError("RecedeTrainer: DeepSpeed and FSDP are not supported (they own the backward pass)")
        if self.args.world_size > 1 or self.args.n_gpu > 1:
            raise ValueError(
                f"RecedeTrainer: one process on one device only (world size "
                f"{self.args.world_size}, {self.args.n_gpu} GPUs)"
            )
        if bp_modified is not None and "data" not in bp_modified and self.train_dataset is None:
            raise ValueError(
                "RecedeTrainer: bp_modified needs train_dataset (or bp_modified['data']) "
                "to draw its refresh samples from"
            )
        data = None if bp_modified is None or "data" in bp_modified else _Pairs(self)
        self.recede_method = build_method(self.recede_net, horizon, bp_modified, data)
        hf = unwrapped(model)
        self._recede_lm_loss: Callable[..., torch.Tensor] | None = (
            getattr(hf, "loss_function", None) if _is_causal_lm(hf) else None
        )
        self._recede_vocab = getattr(getattr(hf, "config", None), "vocab_size", None)

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        """The stock step's division and precision, with the engine's backward."""
        model.train()
        if callable(getattr(self.optimizer, "train", None)):
            self.optimizer.train()
        inputs = self._prepare_inputs(inputs)
        x, y = self.recede_inputs(inputs)
        by_items = self.model_accepts_loss_kwargs and num_items_in_batch is not None
        scaled = self.loss_is_scaled_for_ga if self.loss_is_scaled_for_ga is not None else by_items
        divisor = 1 if scaled else self.current_gradient_accumulation_steps
        net = self.recede_net
        family_loss = net.loss_fn
        lm_loss, vocab = self._recede_lm_loss, self._recede_vocab
        if lm_loss is not None:
            extra = {"num_items_in_batch": num_items_in_batch} if by_items else {}

            def model_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
                return lm_loss(logits, labels, vocab_size=vocab, **extra)

            net.loss_fn = model_loss
        try:
            with self.accelerator.autocast():
                loss = weighted_backward(self.recede_method, x, y, divisor, self.accelerator.scaler)
        finally:
            net.loss_fn = family_loss
        return torch.tensor(loss, dtype=torch.float32, device=self.args.device) / divisor


def _is_causal_lm(model: nn.Module) -> bool:
    return type(model).__name__.endswith("ForCausalLM") or type(model).__name__ == "GPT2LMHeadModel"


class _Pairs(torch.utils.data.Dataset):
    """The trainer's ``train_dataset`` as (x, y) samples for BP-modified's refresh draws: each
    item through the data collator and ``inputs``."""

    def __init__(self, trainer: RecedeTrainer) -> None:
        self.trainer = trainer
        self.dataset: Any = trainer.train_dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        batch = self.trainer.data_collator([self.dataset[i]])
        x, y = self.trainer.recede_inputs(batch)
        return x[0], y[0]
