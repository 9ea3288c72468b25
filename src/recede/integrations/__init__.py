"""recede inside the training frameworks people already use.

One module per framework, each importing its framework only when used:

* :mod:`recede.integrations.transformers` — :class:`~recede.integrations.transformers.RecedeTrainer`,
  a Hugging Face ``Trainer`` whose ``training_step`` runs the horizon engine;
* :mod:`recede.integrations.lightning` — :class:`~recede.integrations.lightning.RecedeModule`,
  a ``LightningModule`` with manual optimisation around the engine;
* :mod:`recede.integrations.accelerate` — :class:`~recede.integrations.accelerate.AcceleratedEngine`,
  ``engine.backward`` in place of ``accelerator.backward``.

What they share is here: the step that divides the loss for gradient accumulation exactly as
the frameworks do (:func:`weighted_backward`), the method a horizon and BP-modified options make
(:func:`build_method`), and the memory a method saves against BP on one batch
(:func:`memory_against_bp`).  What each integration supports and refuses: docs/integrations.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from recede.bpm.estimator import BPModified
from recede.core.blocks import BlockNet
from recede.core.engine import MPC, NonFiniteLossError, write_grads
from recede.core.replay import capture, replaying
from recede.measure.memory import measure


class LossWeight:
    """A stand-in for ``torch.amp.GradScaler`` that the engine scales every loss with: each
    loss is multiplied by ``1 / divisor`` (times the real ``scaler``'s scale when one is
    enabled).  ``ones / divisor`` is the value autograd sends into ``loss`` from
    ``(loss / divisor).backward()``, so the gradients are bitwise those of the frameworks'
    ``loss / gradient_accumulation_steps``."""

    def __init__(self, divisor: float, scaler: torch.amp.GradScaler | None = None) -> None:
        self.divisor = divisor
        self.scaler = scaler if scaler is not None and scaler.is_enabled() else None

    def is_enabled(self) -> bool:
        return True

    def scale(self, t: torch.Tensor) -> torch.Tensor:
        t = t / self.divisor
        return self.scaler.scale(t) if self.scaler is not None else t


def weighted_backward(
    method: Any, x: Any, y: Any, divisor: float = 1, scaler: torch.amp.GradScaler | None = None
) -> float:
    """``method.backward(x, y)`` with every loss divided by ``divisor`` (gradient accumulation)
    and scaled by ``scaler`` (fp16); returns the final loss L(x_T), undivided and unscaled.

    With ``divisor == 1`` this is ``method.backward(x, y, scaler=scaler)``.  Otherwise a NaN or
    infinite loss still raises :class:`~recede.NonFiniteLossError` without a real scaler: before
    any ``.grad`` is written for :class:`~recede.MPC`, after the step for other methods
    (BP-modified), whose message says so.
    """
    real = scaler is not None and scaler.is_enabled()
    if divisor == 1:
        return method.backward(x, y, scaler=scaler)
    weight = LossWeight(divisor, scaler)
    if isinstance(method, MPC):
        step = method.gradients(x, y, scaler=weight)  # type: ignore[arg-type]  # a GradScaler stand-in: scale()
        if not real:
            step.check_finite()
        write_grads(step.total())
        return float(step.losses[method.net.T])
    loss = method.backward(x, y, scaler=weight)
    bad = {k: v for k, v in method.last_losses.items() if not math.isfinite(v)}
    if bad and not real:
        raise NonFiniteLossError(
            f"non-finite loss at depth(s) {sorted(bad)}: {bad}; this step's "
            "gradients were written, zero them before the next step"
        )
    return loss


def build_method(
    net: BlockNet, horizon: int | None, bp_modified: dict[str, Any] | None = None, data: Any = None
) -> MPC | BPModified:
    """``MPC(net, horizon)`` (``None``: T, exact BP), or with ``bp_modified`` (the keyword
    arguments of :class:`~recede.BPModified` but ``net`` and ``horizon``) Paper B's method
    around it, drawing its refresh samples from ``data`` unless the options give ``data``."""
    horizon = net.T if horizon is None else horizon
    if bp_modified is None:
        return MPC(net, horizon)
    if not isinstance(bp_modified, dict):
        raise ValueError(
            f"bp_modified must be a dict of BPModified options (period, offset_samples, "
            f"micro_batch, ...), got {type(bp_modified).__name__}"
        )
    options = {"data": data, **bp_modified}
    return BPModified(net, horizon, **options)


@dataclass(frozen=True)
class MemorySaved:
    """One step of a method and one BP step on the same batch: the real peak each allocated
    (:func:`recede.measure.memory.allocation_peak`) and, as its activations' part, the peak bytes of
    tensors saved for backward."""

    method_bytes: int
    bp_bytes: int
    horizon: int
    T: int
    method_saved_bytes: int
    bp_saved_bytes: int

    @property
    def ratio(self) -> float:
        """The method's real peak over BP's."""
        return self.method_bytes / self.bp_bytes

    def __str__(self) -> str:
        mib = 2**20
        return (
            f"real peak of one step: horizon {self.horizon} of T = {self.T} "
            f"{self.method_bytes / mib:.2f} MiB, BP {self.bp_bytes / mib:.2f} MiB "
            f"({self.ratio:.2f} of BP, {1 - self.ratio:.0%} saved); saved activations "
            f"{self.method_saved_bytes / mib:.2f} against {self.bp_saved_bytes / mib:.2f} MiB"
        )


def memory_against_bp(net: BlockNet, x: Any, y: Any, horizon: int) -> MemorySaved:
    """The real peak (:func:`recede.measure.memory.measure` with ``real=True``) and the saved-tensor
    peak of one horizon-``horizon`` step and one BP step on ``(x, y)``, each after a warm-up
    step.  Nothing is changed: no ``.grad`` is written, and buffers (BatchNorm statistics) and
    the RNG are restored afterwards.  Pass a batch that owns its storage (``x[:32].clone()``,
    not a slice of a whole data set): the saved-tensor meter counts a saved view's whole
    storage."""
    device = next(net.parameters()).device  # CUDA peaks on a GPU, profiler events on the CPU
    real, saved = [], []
    with replaying(capture(x), [net]):  # every generator (CUDA's too) and buffer back as it was
        for engine in (MPC(net, horizon), MPC(net, net.T)):
            engine.gradients(x, y)  # warm-up: the first call allocates what later calls reuse
            _, report = measure(partial(engine.gradients, x, y), module=net, device=device, real=True)
            real.append(report.allocated_peak_bytes or 0)
            saved.append(report.saved_peak_bytes)
    return MemorySaved(real[0], real[1], horizon, net.T, saved[0], saved[1])


def new_head_modules(net: BlockNet, model: torch.nn.Module) -> list[torch.nn.Module]:
    """The heads of ``net`` that hold parameters ``model`` does not (new heads for earlier
    depths, which the framework must also optimise and checkpoint)."""
    own = {id(p) for p in model.parameters()}
    seen: set[int] = set()
    heads = []
    for head in net.heads:
        if id(head) not in seen and any(id(p) not in own for p in head.parameters()):
            heads.append(head)
        seen.add(id(head))
    return heads
