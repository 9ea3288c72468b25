"""Checkpoints that resume a run bit for bit, written so a crash never loses the last one.

A checkpoint holds everything the next step depends on: the model's parameters and buffers,
the optimizer (momentum, Adam moments, current lr), the lr rule (Paper A App. D.2 remembers the
previous epoch's loss), the method's own state when it has one (``state_dict()`` /
``load_state_dict()``: a horizon schedule, the BP-modified offsets, a and λ and their step
counter of Paper B Algorithm 1), the loop's position (:class:`~recede.runs.train.LoopState`: epoch,
batches done, the epoch's running loss, finished epochs) and the torch, NumPy and Python RNG
states.  The shuffle of each epoch is seeded by (seed, epoch), so restoring all of this and
skipping the batches already done replays the uninterrupted run exactly.

:func:`save` writes to a temporary file in the same folder, flushes it to disk and renames it
over the old checkpoint with ``os.replace`` (atomic on POSIX): a run killed mid-write leaves
the previous checkpoint whole.

What a checkpoint file holds can run no code when it is read (results folders get shared,
downloaded and synced).  The file is a safetensors file: every tensor is stored as raw data,
and everything else (the config, the loop's position, the optimizer's and the method's plain
values, the RNG states) is JSON in the safetensors header, with tensors referred to by name.
NumPy arrays (NumPy's RNG state) are stored as byte tensors with their dtype and shape.
Nothing is unpickled: a checkpoint written by an earlier recede (format 1, a pickle written
by ``torch.save``) is refused with one line and not opened.  :func:`check_fits` checks a
checkpoint's content against the model, optimizer and method before any state is loaded, so
a checkpoint with a missing model, a wrong config or wrong tensor shapes is one ``ValueError``.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recede.runs.reports import written_aside
from recede.runs.train import LoopState, LossIncreaseDecay

FORMAT = 2
"""2: safetensors with a JSON header (this module); 1: a ``torch.save`` pickle (refused)."""
_KEY = "recede"  # the safetensors metadata entry holding the JSON part
_LOOP_KEYS = {"epoch", "step", "loss_sum", "seen", "global_step", "history"}
_ARRAY_KINDS = "biuf"  # NumPy dtypes a checkpoint may hold: bool, integers, floats


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


def _encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """``value`` as JSON, every container tagged (so a tuple stays a tuple and an int key an
    int) and every tensor or array moved into ``tensors`` under a name."""
    if value is None or isinstance(value, (bool, str, float)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, np.generic):
        return _encode(value.item(), tensors)
    if isinstance(value, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = value.detach().to("cpu").contiguous().clone()
        return {"T": name}
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in _ARRAY_KINDS:
            raise ValueError(f"a checkpoint cannot hold a NumPy array of dtype {value.dtype}")
        name = f"t{len(tensors)}"
        tensors[name] = torch.from_numpy(np.frombuffer(np.ascontiguousarray(value).tobytes(), np.uint8).copy())
        return {"N": name, "dtype": value.dtype.str, "shape": list(value.shape)}
    if isinstance(value, dict):
        return {"d": [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]}
    if isinstance(value, list):
        return {"l": [_encode(v, tensors) for v in value]}
    if isinstance(value, tuple):
        return {"t": [_encode(v, tensors) for v in value]}
    raise ValueError(f"a checkpoint holds tensors and plain values only, not {type(value).__name__}")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of :func:`_encode`; anything else is a ``ValueError``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if not isinstance(value, dict) or len(value) not in (1, 3):
        raise ValueError("unexpected JSON value")
    if "T" in value and len(value) == 1:
        return tensors[value["T"]]
    if "N" in value and len(value) == 3:
        dtype = np.dtype(str(value["dtype"]))
        if dtype.kind not in _ARRAY_KINDS or not all(isinstance(n, int) and n >= 0 for n in value["shape"]):
            raise ValueError("an array of an unexpected type")
        return np.frombuffer(tensors[value["N"]].numpy().tobytes(), dtype).reshape(value["shape"]).copy()
    ((tag, items),) = value.items()
    if not isinstance(items, list):
        raise ValueError("unexpected JSON value")
    if tag == "d":
        return {_hashable(_decode(k, tensors)): _decode(v, tensors) for k, v in items}
    if tag == "l":
        return [_decode(v, tensors) for v in items]
    if tag == "t":
        return tuple(_decode(v, tensors) for v in items)
    raise ValueError(f"unexpected tag {tag!r}")


def _hashable(key: Any) -> Any:
    if not isinstance(key, (str, int, float, bool, type(None), tuple)):
        raise ValueError("a mapping key that is not a plain value")
    return key


def encode(payload: dict[str, Any]) -> bytes:
    """The checkpoint file's bytes for ``payload`` (safetensors; module docstring)."""
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    header = json.dumps(_encode(payload, tensors), allow_nan=True)
    return save(tensors, metadata={_KEY: header})


def save(
    path: str | Path,
    *,
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loop: LoopState,
    lr_rule: LossIncreaseDecay | None = None,
    method: object = None,
    config: dict[str, Any] | None = None,
    finished: bool = False,
) -> Path:
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
    with written_aside(path) as tmp, open(tmp, "wb") as f:
        f.write(encode(payload))
        f.flush()
        os.fsync(f.fileno())
    return path


def read(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint's contents (on the CPU) without running anything it holds; a missing,
    unreadable, pickled (format 1) or malformed file is named in one line."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    try:
        with open(path, "rb") as f:
            head = f.read(9)  # safetensors: the header's length (8 bytes), then its JSON
    except OSError as err:
        raise ValueError(f"checkpoint {str(path)!r} cannot be read: {err.strerror or err}") from None
    safetensors = len(head) == 9 and head[8:] == b"{" and int.from_bytes(head[:8], "little") <= path.stat().st_size
    if not safetensors and (head[:4] == b"PK\x03\x04" or head[:1] == b"\x80"):  # torch.save's zip, a pickle
        raise ValueError(
            f"checkpoint {str(path)!r} is a pickle (a checkpoint of recede before format "
            f"{FORMAT}, or a foreign file); pickles can run code, so it is not opened: "
            "train again, or pass --overwrite to replace it"
        )
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = (f.metadata() or {}).get(_KEY)
            tensors = {name: f.get_tensor(name) for name in f.keys()} if header is not None else {}
        payload = None if header is None else _decode(json.loads(header), tensors)
    except ValueError as err:
        raise ValueError(f"checkpoint {str(path)!r} cannot be read: {' '.join(str(err).split())[:200]}") from None
    except (KeyError, RecursionError, MemoryError, OverflowError, TypeError) as err:
        raise ValueError(f"checkpoint {str(path)!r} cannot be read ({type(err).__name__})") from None
    except Exception as err:  # safetensors' own errors: a truncated or foreign file
        raise ValueError(f"checkpoint {str(path)!r} cannot be read: {' '.join(str(err).split())[:200]}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a recede checkpoint (format {FORMAT})")
    _check_schema(payload, path)
    return payload


def _check_schema(payload: dict[str, Any], path: Path | str) -> None:
    """The parts every checkpoint holds, of the right types."""
    name = f"checkpoint {str(path)!r}"
    model = payload.get("model")
    if (
        not isinstance(model, dict)
        or not model
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items())
    ):
        raise ValueError(f"{name} holds no model (a mapping of names to tensors)")
    optimizer = payload.get("optimizer")
    if (
        not isinstance(optimizer, dict)
        or not isinstance(optimizer.get("state"), dict)
        or not isinstance(optimizer.get("param_groups"), list)
    ):
        raise ValueError(f"{name} holds no optimizer state")
    if not isinstance(payload.get("config"), dict):
        raise ValueError(f"{name} holds no config (a mapping of the run's options)")
    loop = payload.get("loop")
    if (
        not isinstance(loop, dict)
        or set(loop) != _LOOP_KEYS
        or not isinstance(loop["history"], list)
        or not all(
            isinstance(loop[k], int) and not isinstance(loop[k], bool) and loop[k] >= 0
            for k in ("epoch", "step", "seen", "global_step")
        )
        or not all(isinstance(r, dict) for r in loop["history"])
    ):
        raise ValueError(f"{name} holds no valid loop position")
    rng = payload.get("rng")
    if (
        not isinstance(rng, dict)
        or not isinstance(rng.get("torch"), torch.Tensor)
        or rng["torch"].dtype != torch.uint8
        or not isinstance(rng.get("numpy"), tuple)
        or not isinstance(rng.get("python"), tuple)
    ):
        raise ValueError(f"{name} holds no valid RNG state")
    if not isinstance(payload.get("finished"), bool):
        raise ValueError(f"{name}: 'finished' must be true or false")
    if not (payload.get("lr_rule") is None or isinstance(payload["lr_rule"], dict)):
        raise ValueError(f"{name}: the lr rule state is not a mapping")


_UNCHECKED = object()


def check_fits(
    payload: dict[str, Any],
    *,
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    method: object = _UNCHECKED,
    source: Path | str = "the checkpoint",
) -> None:
    """Check that ``payload`` fits ``net`` (the same names and shapes), ``optimizer`` when
    given (as many parameter groups and parameters, state of the parameters' shapes) and
    ``method`` when given (a method state only for a method that has one; None: a method
    without state); raise one ``ValueError`` naming ``source`` otherwise.  Nothing is loaded."""
    name = f"--resume: {source}"
    own = net.state_dict()
    saved = payload["model"]
    missing, unexpected = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
    shapes = sorted(
        f"{k}: {tuple(saved[k].shape)} vs {tuple(own[k].shape)}"
        for k in set(own) & set(saved)
        if saved[k].shape != own[k].shape
    )
    if missing or unexpected or shapes:
        problems = [
            f"{label} {', '.join(items[:3])}{' …' if len(items) > 3 else ''}"
            for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes))
            if items
        ]
        raise ValueError(f"{name} does not fit the model ({'; '.join(problems)})")
    if optimizer is not None:
        groups = payload["optimizer"]["param_groups"]
        mine = optimizer.param_groups
        if len(groups) != len(mine) or any(
            not isinstance(g, dict) or len(g.get("params", ())) != len(m["params"]) for g, m in zip(groups, mine)
        ):
            raise ValueError(f"{name} does not fit the optimizer (its parameter groups differ)")
        params = {i: p for i, p in enumerate(p for m in mine for p in m["params"])}
        for index, state in payload["optimizer"]["state"].items():
            if index not in params or not isinstance(state, dict):
                raise ValueError(f"{name} does not fit the optimizer (state of parameter {index!r})")
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != params[index].shape:
                    raise ValueError(
                        f"{name} does not fit the optimizer ({key} of parameter {index}: "
                        f"{tuple(value.shape)} vs {tuple(params[index].shape)})"
                    )
    if method is not _UNCHECKED and payload.get("method") is not None and not hasattr(method, "load_state_dict"):
        raise ValueError(f"{name} holds a method state but this method has none; was it written by another method?")
    rng = payload["rng"]
    if rng["torch"].shape != torch.get_rng_state().shape:
        raise ValueError(f"{name} holds a torch RNG state of the wrong size")


def restore(
    payload: dict[str, Any],
    *,
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_rule: LossIncreaseDecay | None = None,
    method: object = None,
) -> LoopState:
    """Put a checkpoint's state back into the objects and RNGs; return the loop position.
    Its content is checked against them first (:func:`check_fits`)."""
    check_fits(payload, net=net, optimizer=optimizer, method=method)
    try:
        loop = LoopState.from_state_dict(payload["loop"])
    except TypeError as err:
        raise ValueError(f"--resume: the checkpoint's loop position is malformed ({err})") from None
    net.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    if lr_rule is not None and payload["lr_rule"] is not None:
        lr_rule.load_state_dict(payload["lr_rule"])
    if payload["method"] is not None:
        if not hasattr(method, "load_state_dict"):  # checked before start; kept for callers of restore alone
            raise ValueError(
                "the checkpoint holds a method state but this method has none; was it written by another method?"
            )
        method.load_state_dict(payload["method"])
    set_rng_state(payload["rng"])
    return loop
