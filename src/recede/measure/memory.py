"""Memory accounting: the real peak of a step, and the bytes of tensors saved for backward.

Paper A eq. 11 models memory as ``M(h) = a·h + b``; SPEC §3 asks for measurements.  The
headline is what a step really allocates; the saved-tensor meter is its breakdown:

* :func:`allocation_peak` — the peak bytes a call allocates above what was allocated when it
  began: on CUDA ``max_memory_allocated`` (and ``max_memory_reserved``); on the CPU the running
  sum of ``torch.profiler``'s allocation and free events (every allocation through PyTorch's CPU
  allocator, in time order), whose maximum is the peak.  It sees everything a step allocates —
  activations, gradients, backward temporaries, the heads' work, what recomputation (``ckpt``) recomputes
  — and is independent of how the C library's ``malloc`` keeps or returns freed memory.
* :func:`resident_peak` — an independent check on Linux: the rise of the process's resident
  set high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``) over a call, after
  :func:`return_freed_memory` has told glibc to hand freed blocks back to the system at once.
  Without that, glibc keeps freed memory and the resident set only grows (what a CPU user sees
  in ``top``: after a large step, a small one looks as large).

* :class:`SavedTensorMeter` — bytes held by tensors that autograd saves for backward, counted
  through ``torch.autograd.graph.saved_tensors_hooks`` and de-duplicated by storage, so a
  tensor saved by several nodes (or views of one storage) counts once.  Storages that belong
  to parameters or buffers are excluded: they exist whatever the training method, and what a
  method changes is the activations it keeps.  The meter follows each saved storage until the
  graph that holds it is freed, and reports the live total and its peak.  It is deterministic
  and device-independent.
* :func:`cuda_peaks` — ``torch.cuda.max_memory_allocated`` and ``max_memory_reserved`` around a
  call, on a GPU (:func:`measure` reports the first).

:func:`measure` runs a callable under the meter (and, with ``real=True``, under
:func:`allocation_peak`) and returns a :class:`MemoryReport`.
"""

from __future__ import annotations

import ctypes
import os
import sys
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
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
    """Peak bytes saved for backward during a call, CUDA peak allocated bytes (or None), and
    (when measured) the peak bytes the call allocated above its start (:func:`allocation_peak`)."""

    saved_peak_bytes: int
    cuda_peak_bytes: int | None
    allocated_peak_bytes: int | None = None

    @property
    def saved_peak_mib(self) -> float:
        return self.saved_peak_bytes / 2**20


def allocation_peak(fn: Callable[[], Any], device: torch.device | str | None = None) -> tuple[Any, int]:
    """Run ``fn()``: its result, and the peak bytes it allocated on ``device`` (CPU by default)
    above the bytes allocated when it began.

    On CUDA this is ``max_memory_allocated`` minus ``memory_allocated`` at the start.  On the CPU
    it is the maximum of the running sum of the allocation (+) and free (−) events that
    ``torch.profiler`` records with ``profile_memory=True``, taken in time order; a tensor that
    existed before the call and is freed inside it counts −, so the peak is never below 0.
    Memory that libraries allocate outside PyTorch's allocator (a BLAS's own workspace) is not
    seen; :func:`resident_peak` sees it.  The profiler's first use in a process takes a few
    seconds to start; later calls add little.
    """
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = fn()
        torch.cuda.synchronize(device)
        return result, max(0, torch.cuda.max_memory_allocated(device) - start)
    from torch.profiler import ProfilerActivity, profile

    _prime_profiler()
    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _quiet_stderr():
        prof.__enter__()
    try:
        result = fn()
    finally:
        with _quiet_stderr():
            prof.__exit__(None, None, None)
    kineto: list[Any] = prof.profiler.kineto_results.events()  # type: ignore[union-attr]  # nbytes() is untyped
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in kineto
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    )
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return result, peak


_primed = False


def _prime_profiler() -> None:
    """Once per process, free under a silenced profiler a tensor made before it started.  The
    allocator logs "Memory block of unknown size was allocated before the profiling started"
    to file descriptor 2 the first time that happens in a process (and never again); a real
    measurement would otherwise print it in the middle of a run's output.  Such frees are not
    counted by :func:`allocation_peak` either way (the profiler records no size for them)."""
    global _primed
    if _primed:
        return
    from torch.profiler import ProfilerActivity, profile

    before = torch.empty(1)
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True):
        del before
    _primed = True


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 for the body: the profiler's C++ side logs every start and stop
    (and, without a GPU, a failed device query) there, which would litter every CLI run."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def return_freed_memory(threshold: int = 2**16) -> bool:
    """Make glibc's ``malloc`` give freed memory back to the system at once: blocks of at least
    ``threshold`` bytes are mapped on their own (``M_MMAP_THRESHOLD``) and unmapped when freed,
    and free memory at the top of the heap is trimmed beyond ``threshold`` (``M_TRIM_THRESHOLD``).
    The environment variables ``MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=65536`` do
    the same for a whole process.  The resident set then follows what is allocated.  Returns
    False, changing nothing, where the C library is not glibc."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, threshold)) and bool(mallopt(m_trim_threshold, threshold))


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def resident_peak(fn: Callable[[], Any]) -> tuple[Any, int]:
    """Run ``fn()``: its result, and how far the process's resident set rose above its size at
    the start (bytes; Linux only, ``OSError`` elsewhere).  Call :func:`return_freed_memory`
    first (once per process, before the model is built), or memory glibc kept from an earlier
    call hides this one's."""
    if not os.path.exists("/proc/self/clear_refs"):
        raise OSError("resident_peak needs Linux's /proc/self/clear_refs")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark VmHWM to the current resident set
    start = _status_kib("VmRSS")
    result = fn()
    return result, max(0, _status_kib("VmHWM") - start) * 1024


def measure(
    fn: Callable[[], Any],
    module: torch.nn.Module | None = None,
    device: torch.device | str | None = None,
    real: bool = False,
) -> tuple[Any, MemoryReport]:
    """Run ``fn()`` and return its result with the memory it used.

    Args:
        fn: the call to measure (e.g. ``lambda: engine.backward(x, y)``).
        module: its parameters and buffers are excluded from the saved-tensor count.
        device: when a CUDA device, its peak allocated bytes during the call are reported too.
        real: also measure the peak bytes allocated above the start (:func:`allocation_peak`).
    """
    if real:
        (result, report), peak = allocation_peak(lambda: measure(fn, module, device), device)
        return result, MemoryReport(report.saved_peak_bytes, report.cuda_peak_bytes, peak)
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
