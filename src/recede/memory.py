"""Memory accounting: bytes of tensors saved for backward, and CUDA peak allocation.

Paper A eq. 11 models memory as ``M(h) = a·h + b``; SPEC §3 asks for two measurements:

* :class:`SavedTensorMeter` — bytes held by tensors that autograd saves for backward, counted
  through ``torch.autograd.graph.saved_tensors_hooks`` and de-duplicated by storage, so a
  tensor saved by several nodes (or views of one storage) counts once.  Storages that belong
  to parameters or buffers are excluded: they exist whatever the training method, and what a
  method changes is the activations it keeps.  The meter follows each saved storage until the
  graph that holds it is freed, and reports the live total and its peak.  It is deterministic
  and device-independent.
* :func:`cuda_peaks` — ``torch.cuda.max_memory_allocated`` and ``max_memory_reserved`` around a
  call, on a GPU (:func:`measure` reports the first).

:func:`measure` runs a callable under both and returns a :class:`MemoryReport`.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch


class _Handle:
    """What autograd stores in place of a saved tensor while the meter is active."""

    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor


def _storage_key(t: torch.Tensor) -> tuple[str, int]:
    return str(t.device), t.untyped_storage().data_ptr()


class SavedTensorMeter:
    """Context manager counting live bytes of tensors saved for backward, and their peak.

    Args:
        exclude: tensors (typically ``model.parameters()`` and buffers) whose storages are
            not counted.
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()) -> None:
        self._excluded = {_storage_key(t) for t in exclude}
        self._refs: dict[tuple[str, int], int] = {}
        self.live_bytes = 0
        self.peak_bytes = 0
        self._hooks: Any = None

    def _pack(self, t: torch.Tensor) -> Any:
        key = _storage_key(t)
        if key in self._excluded or t.layout != torch.strided:
            return t
        if self._refs.get(key, 0) == 0:
            self.live_bytes += t.untyped_storage().nbytes()
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        self._refs[key] = self._refs.get(key, 0) + 1
        # a detached alias: holding ``t`` itself would, for a tensor saved by the node that
        # made it, close a cycle (t → grad_fn → saved t) that keeps a retained graph alive
        handle = _Handle(t.detach())
        weakref.finalize(handle, self._release, key, t.untyped_storage().nbytes())
        return handle

    def _release(self, key: tuple[str, int], nbytes: int) -> None:
        self._refs[key] -= 1
        if self._refs[key] == 0:
            del self._refs[key]
            self.live_bytes -= nbytes

    @staticmethod
    def _unpack(packed: Any) -> torch.Tensor:
        return packed.tensor if isinstance(packed, _Handle) else packed

    def __enter__(self) -> SavedTensorMeter:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)


@dataclass(frozen=True)
class MemoryReport:
    """Peak bytes saved for backward during a call, and CUDA peak allocated bytes (or None)."""

    saved_peak_bytes: int
    cuda_peak_bytes: int | None

    @property
    def saved_peak_mib(self) -> float:
        return self.saved_peak_bytes / 2**20


def measure(fn: Callable[[], Any], module: torch.nn.Module | None = None,
            device: torch.device | str | None = None) -> tuple[Any, MemoryReport]:
    """Run ``fn()`` and return its result with the memory it used.

    Args:
        fn: the call to measure (e.g. ``lambda: engine.backward(x, y)``).
        module: its parameters and buffers are excluded from the saved-tensor count.
        device: when a CUDA device, its peak allocated bytes during the call are reported too.
    """
    exclude = [*module.parameters(), *module.buffers()] if module is not None else []
    on_cuda = device is not None and torch.device(device).type == "cuda"
    if on_cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    with SavedTensorMeter(exclude) as meter:
        result = fn()
    cuda_peak = None
    if on_cuda:
        torch.cuda.synchronize(device)
        cuda_peak = torch.cuda.max_memory_allocated(device)
    return result, MemoryReport(meter.peak_bytes, cuda_peak)


def cuda_peaks(fn: Callable[[], Any], device: torch.device | str) -> tuple[Any, int, int]:
    """Run ``fn()`` on a CUDA ``device``: its result, and the peak bytes allocated and reserved
    (by the caching allocator) during the call."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    result = fn()
    torch.cuda.synchronize(device)
    return result, torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)
