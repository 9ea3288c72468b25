"""What a training method costs per step, as the user pays it (SPEC §5 "Time", issue 10).

* **Time** — a step (forward + the method's gradient) timed round-robin with the other
  methods (:func:`interleaved_medians`), plus, for a BP-modified method, its refresh (B'/b'
  micro-batches, each one local and one BP pass) timed on its own and amortised over the
  refreshes per step of the run (:class:`StepTime`).  The median step alone would drop the
  refreshes, which on small models cost more than the steps between them.
* **Memory** — the real peak of the step and of the refresh (:class:`PaidMemory`): what was
  allocated when it began (parameters, buffers, optimizer state, offsets) plus the peak bytes it
  allocated above that (:func:`recede.measure.memory.allocation_peak`: CUDA's allocator statistics, or
  the profiler's allocation events on a CPU) — activations, gradients, backward temporaries,
  heads, recomputation all included.  Beside it, as a breakdown, the peak of tensors saved for
  backward (:mod:`recede.measure.memory`'s meter), and on CUDA the peak allocated bytes.
* **Training state** — parameters, gradients, optimizer state, the method's own tensors
  (BP-modified: the offsets; during a refresh also two running sums and two micro-batch mean
  gradients, each offset-sized) and the peak of saved activations.

Times are wall seconds, or with ``clock="cpu"`` this process's CPU seconds (:data:`CLOCKS`),
which other jobs on a shared CPU do not inflate.
"""

from __future__ import annotations

import ctypes
import random
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from recede.bpm.estimator import BPModified
from recede.core.blocks import BlockNet
from recede.measure.cost import BlockCosts, Meter, calibrate
from recede.measure.memory import MemoryReport, measure

# what --clock names: wall seconds, or this process's CPU seconds (all its threads), which other
# jobs on a shared CPU do not inflate and which equal wall seconds for one thread on an idle CPU
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}

# parameter-sized tensors a refresh holds besides the offset: the running sums of ḡ_h and ḡ_T
# and the flattened mean gradients of the current micro-batch (BPModified.accumulate)
REFRESH_BUFFERS = 4


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory in the process (no trimming, no mmap'd blocks), as
    PyTorch's caching allocator does on a GPU.  By default a large step that follows a small one
    (plain BP after a horizon) faults its activations' pages in afresh, so on a CPU its time
    depends on what ran before it: +28 % on ResNet-62's BP step in our runs.  Returns False,
    changing nothing, where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's malloc.h
    return bool(mallopt(m_trim_threshold, 2**31 - 1)) and bool(mallopt(m_mmap_max, 0))


def interleaved_medians(
    runs: Mapping[str, Callable[[], object]],
    repeats: int,
    warmup: int = 1,
    device: torch.device | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Median seconds of each of ``runs`` over ``repeats`` rounds after ``warmup`` rounds.

    Each round calls every run once, in an order shuffled afresh (seeded, so reproducible), so a
    change in machine load hits every run alike and no run always follows the same one (whose
    leftovers in caches and allocator would always help or hinder it); on a CUDA ``device``
    each call is timed between synchronisations.  ``clock`` is wall time;
    ``time.process_time`` (this process's CPU seconds) keeps other jobs on a shared CPU out of
    single-threaded measurements.
    """

    def sync() -> None:
        if device is not None and torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)

    times: dict[str, list[float]] = {name: [] for name in runs}
    order, shuffle = list(runs.items()), random.Random(0).shuffle
    for i in range(warmup + repeats):
        shuffle(order)
        for name, run in order:
            sync()
            start = clock()
            run()
            sync()
            if i >= warmup:
                times[name].append(clock() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def timed_step(method, net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """One training step's gradient computation, ``.grad`` cleared first, as a timed run."""

    def step() -> None:
        net.zero_grad(set_to_none=True)
        method.backward(x, y)

    return step


def step_runs(method, net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Callable[[], object]]:
    """The parts of a training step to time: ``"step"``, and for a BP-modified method that
    draws its own micro-batches, ``"refresh"`` (one refresh, drawn as in training).  The step
    then never refreshes by itself, so each part is measured alone; run them inside
    :func:`kept_state` to leave the method's offsets as they were."""
    if not isinstance(method, BPModified) or method.data is None:
        return {"step": timed_step(method, net, x, y)}

    def step() -> None:
        net.zero_grad(set_to_none=True)
        data, method.data = method.data, None  # no refresh falls due inside backward
        try:
            method.backward(x, y)
        finally:
            method.data = data

    return {"step": step, "refresh": lambda: method.refresh(method.draw(method.refreshes))}


@contextmanager
def kept_state(methods: Iterable) -> Iterator[None]:
    """Put every BP-modified method's offsets, scalars and counters back on leaving."""
    saved = [(m, m.state_dict()) for m in methods if isinstance(m, BPModified)]
    try:
        yield
    finally:
        for method, state in saved:
            method.load_state_dict(state)


def refreshes_per_step(method, steps: int = 0, refreshes: int = 0) -> float:
    """How many refreshes a step pays for: ``refreshes / steps`` of a run, or without a run
    1/K for a BP-modified method that refreshes itself every K steps; 0 for other methods."""
    if steps:
        return refreshes / steps
    return 1 / method.period if isinstance(method, BPModified) and method.data is not None else 0.0


@dataclass(frozen=True)
class StepTime:
    """Seconds of one step, of one refresh (None without), and refreshes paid per step."""

    step: float
    refresh: float | None = None
    refreshes_per_step: float = 0.0

    @property
    def seconds(self) -> float:
        """What a step costs with its share of the refreshes."""
        return self.step + (self.refresh or 0.0) * self.refreshes_per_step


@dataclass(frozen=True)
class PaidMemory:
    """Memory of a method's step and refresh, and the bytes of its training state by part."""

    step: MemoryReport
    refresh: MemoryReport | None
    state: dict[str, int]

    @property
    def saved_peak_bytes(self) -> int:
        """Peak bytes saved for backward over the step and the refresh."""
        return max(self.step.saved_peak_bytes, self.refresh.saved_peak_bytes if self.refresh else 0)

    @property
    def saved_peak_mib(self) -> float:
        return self.saved_peak_bytes / 2**20

    @property
    def cuda_peak_bytes(self) -> int | None:
        """Peak CUDA allocated bytes over the step and the refresh (None off CUDA)."""
        peaks = [r.cuda_peak_bytes for r in (self.step, self.refresh) if r and r.cuda_peak_bytes is not None]
        return max(peaks) if peaks else None

    @property
    def real_peak_bytes(self) -> int | None:
        """What the step (or the refresh, whichever is larger) really holds at its peak: the
        persistent state (parameters, buffers, optimizer state, offsets) plus the peak bytes it
        allocated above it; None if not measured."""
        peaks = [
            r.allocated_peak_bytes
            for r in (self.step, self.refresh)
            if r is not None and r.allocated_peak_bytes is not None
        ]
        if not peaks:
            return None
        s = self.state
        return s["parameters"] + s.get("buffers", 0) + s["optimizer"] + s["offsets"] + max(peaks)

    @property
    def state_bytes(self) -> int:
        """Parameters, gradients, optimizer state and offsets, plus the larger of the step's
        saved activations and the refresh's (with its running buffers)."""
        s = self.state
        during_refresh = self.refresh.saved_peak_bytes + s["refresh buffers"] if self.refresh else 0
        return (
            s["parameters"]
            + s["gradients"]
            + s["optimizer"]
            + s["offsets"]
            + max(self.step.saved_peak_bytes, during_refresh)
        )

    @property
    def state_mib(self) -> float:
        return self.state_bytes / 2**20


def measure_paid(
    method,
    net: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer | None = None,
    device: torch.device | str | None = None,
) -> PaidMemory:
    """Measure one step on ``(x, y)`` and, for a BP-modified method, one refresh (each under
    :func:`recede.measure.memory.measure` with its real peak), and count the training state; ``.grad``
    is cleared before (so the step allocates its gradients itself) and after, and the method's
    offsets end as they were."""
    net.zero_grad(set_to_none=True)
    with kept_state([method]):
        runs = step_runs(method, net, x, y)
        _, step = measure(runs["step"], module=net, device=device, real=True)
        refresh = measure(runs["refresh"], module=net, device=device, real=True)[1] if "refresh" in runs else None
    net.zero_grad(set_to_none=True)
    return PaidMemory(step, refresh, training_state(method, net, optimizer))


def training_state(method, net: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """Bytes of the parameters, their gradients (trainable ones), the optimizer's state, the
    method's offsets, the buffers a refresh adds while it runs, and the module's buffers."""

    def nbytes(tensors: Iterable[torch.Tensor]) -> int:
        return sum(t.numel() * t.element_size() for t in tensors)

    params = list(net.parameters())
    optimizer_state = (
        []
        if optimizer is None
        else [v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    )
    offsets = nbytes([method.offset]) if isinstance(method, BPModified) else 0
    return {
        "parameters": nbytes(params),
        "gradients": nbytes(p for p in params if p.requires_grad),
        "optimizer": nbytes(optimizer_state),
        "offsets": offsets,
        "refresh buffers": REFRESH_BUFFERS * offsets,
        "buffers": nbytes(net.buffers()),
    }


def meter(repeats: int, warmup: int, device: torch.device, clock: str = "wall") -> Meter:
    """:func:`interleaved_medians` with these settings, for :func:`time_methods`; ``clock`` is a
    key of :data:`CLOCKS` (``"cpu"`` only off CUDA, where kernels run outside this process)."""
    if clock not in CLOCKS:
        raise ValueError(f"unknown clock {clock!r}; use one of {', '.join(CLOCKS)}")
    if clock == "cpu" and torch.device(device).type == "cuda":
        raise ValueError("--clock cpu counts this process's CPU seconds, not GPU time; use --clock wall on CUDA")
    return partial(interleaved_medians, repeats=repeats, warmup=warmup, device=device, clock=CLOCKS[clock])


def time_methods(
    methods: Sequence,
    nets: Sequence[torch.nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    rates: Sequence[float],
    timer: Meter,
    model_net: BlockNet,
) -> tuple[list[StepTime], BlockCosts]:
    """Time each method's step (and refresh) on ``(x, y)`` with ``timer``, amortising refreshes
    at ``rates`` (refreshes per step), in the same call as the passes of the layer-aware cost
    model on ``model_net`` (:func:`recede.measure.cost.calibrate`); offsets are left as they were."""
    with kept_state(methods):
        runs = {
            f"{i}/{part}": run
            for i, (m, net) in enumerate(zip(methods, nets))
            for part, run in step_runs(m, net, x, y).items()
        }
        costs, seconds = calibrate(model_net, x, y, timer, alongside=runs)
    for net in nets:
        net.zero_grad(set_to_none=True)
    times = [StepTime(seconds[f"{i}/step"], seconds.get(f"{i}/refresh"), rate) for i, rate in enumerate(rates)]
    return times, costs


def paid_row(spent: StepTime, memory: PaidMemory, bp_time: StepTime, bp_memory: PaidMemory) -> dict[str, Any]:
    """The time and memory columns of a method's row in ``bench`` and ``compare``, ratios to BP.

    ``memory ratio`` is the real peak's (``real MiB``, :attr:`PaidMemory.real_peak_bytes`);
    the breakdown beside it: ``saved MiB`` (activations saved for backward, peak), ``saved
    ratio``, ``grads MiB`` and ``optimizer MiB`` (the optimizer's state), and ``state MiB``
    (their sum with parameters and offsets, the meter's model of memory)."""
    real, bp_real = memory.real_peak_bytes, bp_memory.real_peak_bytes
    row = {
        "ms/step": 1000 * spent.seconds,
        "step ms": 1000 * spent.step,
        "refresh ms": None if spent.refresh is None else 1000 * spent.refresh,
        "refreshes/step": spent.refreshes_per_step,
        "time ratio": spent.seconds / bp_time.seconds,
        "real MiB": None if real is None else real / 2**20,
        "memory ratio": real / bp_real
        if real is not None and bp_real
        else memory.saved_peak_bytes / bp_memory.saved_peak_bytes,
        "saved MiB": memory.saved_peak_mib,
        "saved ratio": memory.saved_peak_bytes / bp_memory.saved_peak_bytes if bp_memory.saved_peak_bytes else None,
        "grads MiB": memory.state["gradients"] / 2**20,
        "optimizer MiB": memory.state["optimizer"] / 2**20,
        "state MiB": memory.state_mib,
        "state ratio": memory.state_bytes / bp_memory.state_bytes,
    }
    if memory.cuda_peak_bytes is not None and bp_memory.cuda_peak_bytes is not None:
        row["cuda peak MiB"] = memory.cuda_peak_bytes / 2**20
        row["cuda ratio"] = memory.cuda_peak_bytes / bp_memory.cuda_peak_bytes
    return row
