"""Checkpoints that resume a run bit for bit, written so a crash never loses the last one.

A checkpoint holds everything the next step depends on: the model's parameters and buffers,
the optimizer (momentum, Adam moments, current lr), the lr rule (Paper A App. D.2 remembers the
previous epoch's loss), the method's own state when it has one (``state_dict()`` /
``load_state_dict()``: a horizon schedule, the BP-modified offsets, a and λ and their step
counter of Paper B Algorithm 1), the loop's position (:class:`~recede.train.LoopState`: epoch,
batches done, the epoch's running loss, finished epochs) and the torch, NumPy and Python RNG
states.  The shuffle of each epoch is seeded by (seed, epoch), so restoring all of this and
skipping the batches already done replays the uninterrupted run exactly.

:func:`save` writes to a temporary file in the same folder, flushes it to disk and renames it
over the old checkpoint with ``os.replace`` (atomic on POSIX): a run killed mid-write leaves
the previous checkpoint whole.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recede.train import LoopState, LossIncreaseDecay

FORMAT = 1


def rng_state() -> dict[str, Any]:
    """The torch (CPU and CUDA), NumPy and Python RNG states."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: str | Path, *, net: torch.nn.Module, optimizer: torch.optim.Optimizer,
         loop: LoopState, lr_rule: LossIncreaseDecay | None = None, method: object = None,
         config: dict[str, Any] | None = None, finished: bool = False) -> Path:
    """Write a checkpoint to ``path`` atomically and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "model": net.state_dict(),
        "optimizer": optimizer.state_dict(),
        "lr_rule": lr_rule.state_dict() if lr_rule is not None else None,
        "method": method.state_dict() if hasattr(method, "state_dict") else None,
        "loop": loop.state_dict(),
        "rng": rng_state(),
        "config": config or {},
        "finished": finished,
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint's contents (on the CPU); a missing or unreadable file is named."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a truncated or foreign file: say which file, not a pickle traceback
        raise ValueError(f"checkpoint {str(path)!r} cannot be read: {err}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a recede checkpoint (format {FORMAT})")
    return payload


def restore(payload: dict[str, Any], *, net: torch.nn.Module, optimizer: torch.optim.Optimizer,
            lr_rule: LossIncreaseDecay | None = None, method: object = None) -> LoopState:
    """Put a checkpoint's state back into the objects and RNGs; return the loop position."""
    net.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    if lr_rule is not None and payload["lr_rule"] is not None:
        lr_rule.load_state_dict(payload["lr_rule"])
    if payload["method"] is not None:
        if not hasattr(method, "load_state_dict"):
            raise ValueError("the checkpoint holds a method state but this method has none; "
                             "was it written by another method?")
        method.load_state_dict(payload["method"])
    set_rng_state(payload["rng"])
    return LoopState.from_state_dict(payload["loop"])
