"""Pretrained source checkpoints for fine-tuning (``recede pretrain``) and ``--init``.

``recede pretrain`` trains a registry model with BP on a *source* task and writes its state dict
as ``OUT/<model>-<data>-<hash>.safetensors`` (tensors only: nothing in it can run code) with a
JSON sidecar ``<same name>.json`` saying what it is: the settings, the source task, the final
loss and accuracy, the time it took and the machine.  ``<hash>`` is the SHA-256 (first 16 hex
digits) of the settings that determine the weights (:func:`settings`): model and its options,
data and its options, epochs, batch size, optimizer, lr, momentum, seed, and
:data:`FORMAT_VERSION`.  Training is seeded and its data order fixed, so the same settings give
the same bytes on one machine and thread count; a second call with the same settings finds the
file (its SHA-256 checked against the sidecar) and trains nothing; ``--overwrite`` trains and
writes it again.

``--init FILE`` (``train``, ``compare``, ``demo``; :class:`recede.runs.run.Workload`) loads such a
file, or a user's own ``.safetensors`` or weights-only ``.pt`` state dict, into every fresh
model before training (:func:`load_init`, through :func:`recede.models.weights.load_weights`,
the loader behind ``--weights``).  The rule: every key of the model and of the file must agree
in name and shape, except the model's keys that match an ``--init-skip`` glob pattern
(e.g. ``'heads.*'``), which keep their fresh, seeded initialisation; the file's keys that match
are ignored.  A mismatch is one line naming the keys (sorted, the first of each kind first).

:data:`PRESETS` name the source tasks of docs/finetune.md, and :data:`TARGET` the vision presets'
target: distorted digits 0-4 (30 copies of each training image) as the source and 200 distorted
images of 5-9 as the target, so the target's classes are never seen in pretraining; for the LM,
the stdlib corpus.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from recede.config import key_values
from recede.runs import preflight
from recede.runs.reports import written_aside

FORMAT_VERSION = 1
"""Bumped whenever what :func:`pretrain` writes for the same settings changes."""

PRESETS: dict[str, dict[str, Any]] = {
    "resnet": {
        "model": "resnet62",
        "model_opt": ["widths=[8, 16, 32]", "blocks_per_stage=2"],
        "data": "digits",
        "data_opt": ["classes=[0, 1, 2, 3, 4]", "distort=1.0", "copies=30"],
        "epochs": 3,
        "batch_size": 32,
        "optimizer": "sgd",
        "lr": 0.05,
        "momentum": 0.9,
    },
    "vit": {
        "model": "vit-b16",
        "model_opt": ["img_size=8", "patch_size=2", "embed_dim=32", "depth=4", "num_heads=4"],
        "data": "digits",
        "data_opt": ["classes=[0, 1, 2, 3, 4]", "distort=1.0", "copies=30"],
        "epochs": 3,
        "batch_size": 32,
        "optimizer": "adam",
        "lr": 0.002,
        "momentum": 0.0,
    },
    "llama": {
        "model": "llama",
        "model_opt": ["n_layer=2", "hidden_size=64", "n_head=4", "n_kv_head=2", "intermediate_size=128"],
        "data": "text",
        "data_opt": ["seq_len=64", "stride=2048"],
        "epochs": 3,
        "batch_size": 16,
        "optimizer": "adam",
        "lr": 0.003,
        "momentum": 0.0,
    },
}
"""Source checkpoints of docs/finetune.md (``--preset NAME``): reduced ResNet-62 and ViT-B/16
pretrained on distorted digits 0-4 (30 randomly distorted copies of each training image), and
a 2-layer Llama-layout LM on the standard library's source (``text``: bytes, 64-byte windows
every 2 048 bytes).  Flags given with ``--preset`` override its values."""

TARGET: dict[str, Any] = {"classes": [5, 6, 7, 8, 9], "distort": 1.0, "train_size": 200}
"""The ``digits`` options of the vision presets' target task (docs/finetune.md): classes the
source never saw, distorted the same way, 200 training images (40 per class).  On it BP
fine-tuned from the presets beats BP from random weights by 7 points (ResNet) and 36 (ViT);
with all 722 images a fresh ResNet nearly catches up (docs/finetune.md, "Does the source
transfer?")."""

_DEFAULTS: dict[str, Any] = {
    "model_opt": [],
    "data_opt": [],
    "epochs": 5,
    "batch_size": 32,
    "optimizer": "sgd",
    "lr": 0.01,
    "momentum": 0.0,
}


def settings(args: Any) -> dict[str, Any]:
    """What determines the weights :func:`pretrain` writes: ``--preset``'s values, overridden
    by the flags given, with :data:`FORMAT_VERSION`; model and data options parsed."""
    chosen = dict(_DEFAULTS) | (PRESETS[args.preset] if args.preset else {})
    for key in ("model", "model_opt", "data", "data_opt", "epochs", "batch_size", "optimizer", "lr", "momentum"):
        if getattr(args, key) is not None:
            chosen[key] = getattr(args, key)
    if chosen.get("model") is None or chosen.get("data") is None:
        raise ValueError(f"give --preset ({', '.join(sorted(PRESETS))}) or --model and --data")
    return {
        "format_version": FORMAT_VERSION,
        "model": chosen["model"],
        "model_options": key_values(chosen["model_opt"], "--model-opt"),
        "data": chosen["data"],
        "data_options": key_values(chosen["data_opt"], "--data-opt"),
        "method": "bp",
        "epochs": chosen["epochs"],
        "batch_size": chosen["batch_size"],
        "optimizer": chosen["optimizer"],
        "lr": chosen["lr"],
        "momentum": chosen["momentum"],
        "seed": args.seed,
    }


def content_hash(values: dict[str, Any]) -> str:
    """SHA-256 of ``values`` as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(values, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def checkpoint_name(values: dict[str, Any]) -> str:
    """``<model>-<data>-<hash[:16]>``: the file name of :func:`pretrain`'s output, no suffix."""
    return f"{values['model']}-{values['data']}-{content_hash(values)[:16]}"


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cached(folder: Path, values: dict[str, Any]) -> Path | None:
    """The checkpoint in ``folder`` written with ``values``, if it is there intact (its sidecar
    names the same hash and the file's SHA-256); else None."""
    path = folder / f"{checkpoint_name(values)}.safetensors"
    sidecar = path.with_suffix(".json")
    if not (path.is_file() and sidecar.is_file()):
        return None
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None
    if (
        not isinstance(meta, dict)
        or meta.get("hash") != content_hash(values)
        or meta.get("sha256") != _file_sha256(path)
    ):
        return None
    return path


def tensors_to_save(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``net``'s state dict with a tensor shared under several names (a head shared by a stage,
    a tied embedding) kept once, under its first name, as safetensors requires;
    :func:`recede.models.weights.load_weights` restores the other names."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, tuple[int, ...]]] = set()
    for key, value in net.state_dict().items():
        mark = (value.data_ptr(), tuple(value.shape))
        if value.numel() and mark in seen:
            continue
        seen.add(mark)
        out[key] = value.detach().to("cpu").contiguous().clone()
    return out


def pretrain(values: dict[str, Any], folder: Path, *, progress: bool = False, reuse: bool = True) -> tuple[Path, bool]:
    """Write the checkpoint of ``values`` (:func:`settings`) in ``folder`` unless it is cached
    (and ``reuse``); return its path and whether it was reused.  The data and model are checked first
    (:mod:`recede.runs.preflight`); nothing is written before they are, and the files appear whole
    (written aside, then renamed)."""
    from safetensors.torch import save_file

    from recede.runs.config import LoopConfig, MeasureConfig, OptimizerConfig, OutputConfig, RunConfig, WorkloadConfig
    from recede.runs.reports import machine
    from recede.runs.run import Workload, train_method
    from recede.runs.train import evaluate

    task = preflight.load_data(values["data"], values["data_options"])
    device = torch.device("cpu")
    net = preflight.build_model(values["model"], task, values["model_options"], device)
    preflight.probe(net, task, device, f"model {values['model']!r}")
    hit = cached(folder, values) if reuse else None
    if hit is not None:
        return hit, True
    started = time.perf_counter()
    # BP from the seed, no lr decay, evaluated once at the end
    config = RunConfig(
        workload=WorkloadConfig(
            values["model"], values["data"], dict(values["model_options"]), dict(values["data_options"])
        ),
        methods=["bp"],
        optimizer=OptimizerConfig(values["optimizer"], values["lr"], values["momentum"], 1.0),
        loop=LoopConfig(epochs=values["epochs"], batch_size=values["batch_size"], seed=values["seed"]),
        measure=MeasureConfig(paid=False, test=False),
        output=OutputConfig(out=None, progress=progress),
    ).validate()
    result = train_method(
        Workload(task, values["model"], dict(values["model_options"]), device, net=net), "bp", config, out=None
    )
    net, history = result.net, result.history
    test = evaluate(net, task.test, classification=task.kind == "classification", metrics=task.metrics)
    seconds = time.perf_counter() - started
    digest = content_hash(values)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{checkpoint_name(values)}.safetensors"
    with written_aside(path) as temporary, written_aside(path.with_suffix(".json")) as sidecar:
        # one metadata key: safetensors writes several in no fixed order, and the bytes must repeat
        save_file(tensors_to_save(net), str(temporary), metadata={"recede-pretrain": digest})
        meta = {
            "what": "a recede pretrained source checkpoint (recede pretrain; docs/finetune.md)",
            "file": path.name,
            "sha256": _file_sha256(temporary),
            "hash": digest,
            "settings": values,
            "source_task": {
                "name": task.name,
                "kind": task.kind,
                "input_shape": list(task.input_shape),
                "output_dim": task.output_dim,
                **task.info,
            },
            "final_train_loss": history[-1].train_loss,
            "test": test,
            "pretrain_seconds": seconds,
            "machine": machine(device),
        }
        sidecar.write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    return path, False


def read_init(path: str) -> dict[str, torch.Tensor]:
    """The tensors of the ``--init`` file at ``path`` (:func:`recede.models.weights.read_state_dict`),
    read once so that every fresh model of a run loads from memory; errors start ``--init``."""
    from recede.models.weights import read_state_dict

    try:
        return read_state_dict(path)
    except (FileNotFoundError, ValueError) as err:
        raise type(err)(f"--init: {err}") from None


def load_init(
    net: torch.nn.Module,
    path: str | None,
    skip: Sequence[str] = (),
    state: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """``--init``: load the state dict at ``path`` (or ``state``, its tensors already read) into
    ``net`` by the rule of the module docstring (:func:`recede.models.weights.load_weights` with
    ``skip``).  A missing, unreadable (a pickle that is not a plain state dict is refused
    unread) or ill-fitting file is a ``ValueError``/``FileNotFoundError`` of one line starting
    ``--init``."""
    from recede.models.weights import load_weights

    if path is None:
        raise ValueError("--init-skip needs --init FILE")
    try:
        load_weights(net, path, skip=tuple(skip), state=state, skip_option="--init-skip")
    except (FileNotFoundError, ValueError) as err:
        raise type(err)(f"--init: {err}") from None


def describe_init(net: torch.nn.Module, path: str | None, skip: Sequence[str] = ()) -> str:
    """The line a run prints about its ``--init``: what was loaded, what kept its fresh values."""
    from recede.models.weights import skipped_by

    keys = list(net.state_dict())
    fresh = [k for k in keys if skipped_by(k, skip)]
    shown = ", ".join(fresh[:6]) + (f" … ({len(fresh)} in all)" if len(fresh) > 6 else "")
    return f"--init {path}: {len(keys) - len(fresh)} tensors loaded" + (
        f"; fresh (--init-skip): {shown}" if fresh else ""
    )
