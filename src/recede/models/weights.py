"""Pretrained weights from a local file — never from a hub.

Paper B fine-tunes pretrained ResNet-50 and ViT-B/16.  This machine (and many clusters) has no
internet, so weights come from a file the user supplies: a PyTorch/timm state dict (``.pt``,
``.pth``, ``.bin``; optionally nested under ``"state_dict"`` or ``"model"``) or a
``.safetensors`` file, with the key names of the timm model.
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors stored at ``path``; ``FileNotFoundError`` naming the path if it is absent,
    ``ValueError`` if the file cannot be read or holds something else."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"weights file not found: {path} (give a local .pt/.pth or .safetensors state dict; nothing is downloaded)"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        with warnings.catch_warnings():  # torch warns about pickle protocols before it fails
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: name it, not a pickle traceback
        message = (str(err).strip().splitlines() or [""])[0].split(". ")[0]
        raise ValueError(f"{path} cannot be read as a state dict ({type(err).__name__}: {message})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return state


def load_weights(
    model: nn.Module,
    path: str | Path,
    classifier: str | None = None,
    skip: Sequence[str] = (),
    *,
    state: Mapping[str, torch.Tensor] | None = None,
    skip_option: str = "skip pattern",
) -> nn.Module:
    """Load a local state dict into ``model`` (a timm or Hugging Face model, or a registry
    :class:`~recede.core.blocks.BlockNet` for ``--init``), strictly except for the classifier and
    ``skip``; a tied weight stored once (under either of its names) loads both.

    Every key must match the model's names and shapes, except that the classifier's entries
    (``classifier``, default timm's ``pretrained_cfg["classifier"]``, e.g. ``fc`` or ``head``)
    are skipped when their shape differs, as when ImageNet weights (1000 classes) start a
    CIFAR-100 fine-tune: that classifier keeps its fresh initialisation.  The model's keys that
    match a glob pattern of ``skip`` (``fnmatch``, e.g. ``heads.*``) are not loaded either,
    whether the file has them or not (new heads keep their fresh initialisation), and the
    file's keys that match are ignored; each pattern
    must match at least one key of the model (an error names it as ``skip_option``, the option
    the caller's user wrote).  ``state``: the file's tensors when the caller has already read
    them (:func:`read_state_dict`; ``path`` then only names the file in messages).
    A model with peft adapters (``adapter=lora``/``lokr``) takes the weights of its base model:
    the file's ``X.weight`` loads into the wrapped ``X.base_layer.weight``, and the adapter's own
    tensors (``lora_*``, ``lokr_*``) keep their initialisation when the file has none of them.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: keys are missing or unexpected, or shapes differ; the message lists them
            (the first of each kind first), on one line.
    """
    own = model.state_dict()
    state = _onto_adapters(dict(state) if state is not None else read_state_dict(path), own)
    for pattern in skip:
        if not any(fnmatch.fnmatchcase(k, pattern) for k in own):
            raise ValueError(
                f"{skip_option} {pattern!r} matches no parameter or buffer of "
                f"{type(model).__name__} (its first keys: {', '.join(list(own)[:3])})"
            )
    prefix = classifier or getattr(model, "pretrained_cfg", {}).get("classifier")
    skipped = [
        k for k in state if prefix and k.startswith(prefix + ".") and k in own and state[k].shape != own[k].shape
    ]
    skipped += [k for k in {**own, **state} if skipped_by(k, skip)]
    state = {k: v for k, v in state.items() if k not in skipped}
    missing = sorted(set(own) - set(state) - set(skipped) - _tied_aliases(own, state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(state) & set(own)
        if state[k].shape != own[k].shape
    )
    if missing or unexpected or mismatched:

        def show(names: list[str]) -> str:
            return ", ".join(names[:8]) + (f" … ({len(names)} in all)" if len(names) > 8 else "")

        problems = [
            f"{label}: {show(names)}"
            for label, names in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched))
            if names
        ]
        raise ValueError(f"weights in {path} do not fit {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(state, strict=False)
    return model


ADAPTER_MARKS = (".lora_", ".lokr_")
"""A key holding one of these is an adapter's own tensor (peft's names)."""


def _onto_adapters(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` of a model without adapters, renamed onto ``own``'s adapted names (``X.w`` →
    ``X.base_layer.w``), with ``own``'s adapter tensors added as they are; ``state`` unchanged
    when ``own`` has no adapters or ``state`` already has adapter tensors (a file of an adapted model)."""
    adapters = [k for k in own if any(m in k for m in ADAPTER_MARKS)]
    if not adapters or any(any(m in k for m in ADAPTER_MARKS) for k in state):
        return state
    plain = {k.replace(".base_layer.", "."): k for k in own if ".base_layer." in k}
    renamed = {plain.get(k, k): v for k, v in state.items()}
    return renamed | {k: own[k] for k in adapters}


def skipped_by(key: str, skip: Sequence[str]) -> bool:
    """Whether ``key`` matches one of the glob patterns ``skip`` (:func:`load_weights`)."""
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in skip)


def _tied_aliases(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> set[str]:
    """Keys of ``own`` that share their tensor with a key in ``state`` (a tied weight, e.g. an LM
    head tied to the token embedding, which Hugging Face files store once)."""
    stored = {own[k].data_ptr() for k in state if k in own}
    return {k for k, v in own.items() if k not in state and v.data_ptr() in stored}
