"""Replaying a block's forward exactly as it first ran: the mechanism of recomputation.

A block recomputed for its backward must produce the same output as its first forward and
must leave no trace of having run twice.  Two things would differ (as in
``torch.utils.checkpoint``, whose ``preserve_rng_state`` does the first):

* randomness — dropout draws from the global generators; :func:`capture` records the CPU
  generator's state (and, for inputs on CUDA, those devices' generators) before the first
  forward, and :func:`replaying` runs the recomputation from that state inside
  ``torch.random.fork_rng``, so the caller's generators continue as if nothing had been
  recomputed;
* module state — a BatchNorm in training mode updates its running statistics on every forward;
  :func:`replaying` puts the buffers of the recomputed modules back to their values before the
  recomputation (:func:`kept_buffers`, which :mod:`recede.core.recompute` uses too), so each
  forward updates them exactly once, as a single pass would.  (In training mode BatchNorm
  normalises by the batch's own statistics, so the running statistics do not change what the
  recomputation computes.)

This module is part of the core (:mod:`recede.core.engine` uses it) and imports nothing of recede.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._pytree import tree_leaves


@dataclass(frozen=True)
class RngState:
    """The CPU generator's state and, per CUDA device index, that device's generator state."""

    cpu: torch.Tensor
    cuda: dict[int, torch.Tensor]


def capture(inputs: Any) -> RngState:
    """The generator states a forward on ``inputs`` (a tensor or pytree) will draw from: the
    CPU's, and each CUDA device's that holds a tensor of ``inputs``."""
    devices = sorted(
        {t.device.index or 0 for t in tree_leaves(inputs) if isinstance(t, torch.Tensor) and t.device.type == "cuda"}
    )
    return RngState(torch.get_rng_state(), {d: torch.cuda.get_rng_state(d) for d in devices})


@contextmanager
def kept_buffers(modules: Iterable[torch.nn.Module]) -> Iterator[None]:
    """Run the body and put the buffers of ``modules`` back to their values before it: a
    recomputed forward must not update BatchNorm's running statistics a second time."""
    buffers = list(dict.fromkeys(b for m in modules for b in m.buffers()))
    before = [b.clone() for b in buffers]
    try:
        yield
    finally:
        # through .data, which has its own version counter: the recomputed graph saved the
        # buffers (BatchNorm's backward takes them), and a version bump would fail its backward
        for buffer, value in zip(buffers, before):
            buffer.data.copy_(value)


@contextmanager
def replaying(state: RngState, modules: Iterable[torch.nn.Module]) -> Iterator[None]:
    """Run the body with the generators at ``state`` and the buffers of ``modules`` restored
    afterwards (:func:`kept_buffers`); the generators are then back where they were before the body."""
    with torch.random.fork_rng(devices=list(state.cuda), enabled=True), kept_buffers(modules):
        torch.set_rng_state(state.cpu)
        for device, cuda_state in state.cuda.items():
            torch.cuda.set_rng_state(cuda_state, device)
        yield
