"""accelerate with a receding horizon: :class:`AcceleratedEngine`, ``engine.backward`` in place
of ``accelerator.backward``.

>>> net = recede.wrap(model)                                  # before prepare: new heads included
>>> opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
>>> net, opt, loader = accelerator.prepare(net, opt, loader)
>>> engine = AcceleratedEngine(accelerator, net, horizon=2)
>>> for x, y in loader:
...     with accelerator.accumulate(net):
...         loss = engine.backward(x, y)                      # forward + g_h, as accelerator.backward
...         opt.step(); opt.zero_grad()

What it does with the accelerator's features:

* **gradient accumulation** — each loss is divided by ``gradient_accumulation_steps`` as
  ``accelerator.backward`` divides it (bitwise the same gradients); the prepared optimizer
  steps and zeroes only when ``accelerator.sync_gradients``, as usual;
* **mixed precision** — every forward runs under ``accelerator.autocast()``; with fp16 the
  accelerator's GradScaler scales the losses (``opt.step()`` unscales and skips overflowed
  steps, ``accelerator.clip_grad_norm_`` works);
* **data parallel** (``MULTI_CPU``/``MULTI_GPU``, DDP) — the engine bypasses DDP's hooks, so
  the gradients are averaged over the processes by :class:`recede.parallel.data_parallel.DataParallel`'s
  bucketed all-reduce when ``sync_gradients`` (once per accumulated step); BP-modified's
  refresh statistics are summed over the processes.  N processes of batch B step exactly as
  one process of batch N·B (``tests/test_integrations_accelerate.py``, 2 CPU processes on
  gloo);
* **refused** in one line: DeepSpeed, FSDP and Megatron-LM (they own the backward pass and
  shard parameters), and a model that is not a :class:`recede.BlockNet` (wrap it before
  ``prepare`` so the new heads are in the optimizer).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist

from recede.core.blocks import BlockNet
from recede.core.engine import NonFiniteLossError
from recede.integrations import build_method, weighted_backward
from recede.parallel.data_parallel import DataParallel

REFUSED = ("DEEPSPEED", "FSDP", "MEGATRON_LM")


class AcceleratedEngine:
    """A horizon-h engine for a model prepared by ``accelerate`` (see the module docstring).

    Args:
        accelerator: the ``accelerate.Accelerator``.
        net: ``recede.wrap(model)`` (or any BlockNet), prepared by the accelerator or not.
        horizon: h in [1, T] (``None``: T, exact BP).
        bp_modified: options of :class:`recede.BPModified` (``period``, ``offset_samples``,
            ``micro_batch``, ``data``...).
    """

    def __init__(
        self,
        accelerator: Any,
        net: torch.nn.Module,
        horizon: int | None = None,
        *,
        bp_modified: dict[str, Any] | None = None,
    ) -> None:
        kind = getattr(accelerator.distributed_type, "name", str(accelerator.distributed_type))
        if kind in REFUSED:
            raise ValueError(
                f"AcceleratedEngine: {kind} is not supported (it owns the backward pass "
                "and shards parameters); use DDP (multi-GPU / multi-CPU) or one process"
            )
        base = accelerator.unwrap_model(net)
        if not isinstance(base, BlockNet):
            raise ValueError(
                f"AcceleratedEngine needs recede.wrap(model) (a BlockNet), got "
                f"{type(base).__name__}; wrap the model before accelerator.prepare and "
                "build the optimizer on the BlockNet's parameters"
            )
        self.accelerator, self.net = accelerator, base
        self.method = build_method(base, horizon, bp_modified)
        self.world_size = accelerator.num_processes
        self.parallel = DataParallel(self.method, base) if self.world_size > 1 else None

    def backward(self, x: Any, y: Any) -> float:
        """Forward ``x`` under the accelerator's autocast and accumulate g_h into ``.grad``,
        divided for gradient accumulation and scaled for fp16 as ``accelerator.backward``
        would; with several processes, average the gradients over them on the steps that
        synchronise.  Returns L(x_T) of this batch (the processes' mean when they synchronise)."""
        acc = self.accelerator
        if self.parallel is not None and self.parallel.broadcast_buffers:
            for buffer in self.net.buffers():
                dist.broadcast(buffer, 0)
        try:
            with acc.autocast():
                loss, failure = weighted_backward(self.method, x, y, acc.gradient_accumulation_steps, acc.scaler), None
        except NonFiniteLossError as err:
            if self.parallel is None:
                raise
            loss, failure = math.nan, err
        if self.parallel is not None:
            if acc.sync_gradients:
                loss = self.parallel.reduce_gradients(loss)
            else:  # no gradients travel, but every process learns of a failure on one of them
                flag = torch.tensor([loss], dtype=torch.float64, device=acc.device)
                dist.all_reduce(flag)
                if not math.isfinite(float(flag)):
                    raise failure or NonFiniteLossError("another process's loss is not finite")
        if failure is not None:
            raise failure
        return loss

    @property
    def last_losses(self) -> dict[int, float]:
        """L(x_k) of the last step at every evaluated depth (this process's)."""
        return self.method.last_losses
