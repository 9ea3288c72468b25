"""Data-parallel training under ``torchrun`` for every method: BP, every horizon, BP-modified.

Each of W processes (ranks) runs the whole method on its own shard of the batch, then
:class:`DataParallel` averages ``.grad`` across ranks with a bucketed all-reduce.  This is exact,
not an approximation: every loss is a mean over the batch and the horizon gradient
g_h(u_t) = ∇_{u_t} L(x_{min(t+h,T)}) (Paper A eq. 9, Paper B eq. 4) is linear in the per-sample
losses, so the mean over ranks of g_h on B samples each is g_h on the W·B samples together.
BP-modified's gradient ĝ = a·mean_B[g_h] + λ·Δ (Paper B eq. 5) is affine in g_h, so it averages
the same way once every rank holds the same a, λ and Δ; :class:`DataParallel` makes sure of that
by summing the refresh's sufficient statistics across ranks (it is BP-modified's
:class:`~recede.bpm.workers.Workers` strategy).

Around that, what a launcher needs (``torchrun``, or :mod:`recede.parallel.launch` for ``recede train
--nproc N``): :func:`init_from_env` (NCCL on CUDA, gloo on CPU, with a collective timeout so
that a rank that dies or hangs makes the others raise :class:`RankFailure` instead of waiting
forever), and :func:`is_main` for the rank that writes checkpoints, logs and reports.  The data are sharded
by :func:`recede.runs.train.batches` with
``rank``/``world_size``: every rank takes its share of the single-process epoch order (as
torch's ``DistributedSampler`` would), so W ranks of batch B see exactly the batches that one
process of batch W·B sees.  See ``docs/distributed.md``.
"""

from __future__ import annotations

import itertools
import math
import os
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from recede.core.engine import NonFiniteLossError
from recede.core.method import Method
from recede.parallel.state import RankState, current

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 300.0
DEFAULT_BUCKET_MB = 25.0
_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class RankFailure(RuntimeError):
    """A collective failed: another rank died, hung past the timeout, or diverged.

    ``operation``: the collective or message this rank waited in when it gave up (``None``
    when the failure is not a wait, e.g. the launcher's verdict on a dead rank)."""

    def __init__(self, message: str, *, operation: str | None = None) -> None:
        super().__init__(message)
        self.operation = operation


@dataclass(frozen=True)
class Context(RankState):
    """Where this process stands (its :class:`~recede.parallel.state.RankState`) and the device
    it computes on."""

    device: torch.device = torch.device("cpu")
    backend: str | None = None  # None: a single process, no process group


MAX_TIMEOUT_S = 7 * 24 * 3600.0
"""The longest ``--dist-timeout`` (a week); the shortest is a millisecond."""


def check_env() -> None:
    """Refuse, in one line, a launcher environment that is partial or malformed: ``RANK``,
    ``WORLD_SIZE`` and the launcher's other variables (:data:`_TORCHRUN_ENV`) are either all
    absent (a single process) or all present with 0 ≤ RANK < WORLD_SIZE and a port in
    [1, 65535].  A stray ``RANK`` would otherwise make a plain run skip its ``--out`` checks."""
    present = [name for name in _TORCHRUN_ENV if name in os.environ]
    if not present:
        return
    missing = [name for name in _TORCHRUN_ENV if name not in os.environ]
    if missing:
        raise ValueError(
            f"the environment sets {', '.join(present)} but not {', '.join(missing)}: "
            "unset them, or start the processes with torchrun or --nproc (docs/distributed.md)"
        )
    values = {}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        text = os.environ[name]
        if not (text.isascii() and text.isdigit()) or len(text) > 9:
            raise ValueError(f"the environment variable {name}={text!r} is not a non-negative integer")
        values[name] = int(text)
    if not 1 <= values["WORLD_SIZE"] <= 4096 or values["RANK"] >= values["WORLD_SIZE"]:
        raise ValueError(
            f"the environment sets RANK={values['RANK']}, WORLD_SIZE={values['WORLD_SIZE']}: "
            "RANK must be in [0, WORLD_SIZE), WORLD_SIZE in [1, 4096]"
        )
    if not 1 <= values["MASTER_PORT"] <= 65535:
        raise ValueError(f"the environment sets MASTER_PORT={values['MASTER_PORT']}, not a port in [1, 65535]")


def under_torchrun() -> bool:
    """True when torchrun (or an equivalent launcher) set ``WORLD_SIZE`` for this process."""
    return "WORLD_SIZE" in os.environ


def init_from_env(backend: str | None = None, timeout: float = DEFAULT_TIMEOUT_S) -> Context:
    """Join the process group torchrun describes in the environment.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``.  Without
    ``WORLD_SIZE`` this is a single process: no group is created and rank 0 of 1 is returned.
    ``backend`` defaults to ``nccl`` when CUDA is available (each rank then computes on
    ``cuda:LOCAL_RANK``) and ``gloo`` otherwise.  ``timeout`` (seconds) bounds every collective:
    a rank waiting for one that died or hangs raises :class:`RankFailure` after at most that
    long (gloo notices a dead peer's closed connection at once), joining the group included.
    """
    if not 1e-3 <= timeout <= MAX_TIMEOUT_S:
        raise ValueError(f"timeout must be in [0.001, {MAX_TIMEOUT_S:g}] seconds, got {timeout:g}")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        backend = dist.get_backend()
    elif not under_torchrun():
        return Context(0, 1, 0, torch.device("cuda" if backend == "nccl" else "cpu"), None)
    else:
        missing = [name for name in _TORCHRUN_ENV if name not in os.environ]
        if missing:
            raise ValueError(
                f"WORLD_SIZE is set but {', '.join(missing)} is not; start the "
                "processes with torchrun (see docs/distributed.md)"
            )
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        try:
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
        except (RuntimeError, TimeoutError) as err:  # a rank that never came: name it as a collective would
            raise RankFailure(
                f"rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']}: joining the "
                f"process group failed: another rank died or hung before joining "
                f"({' '.join(str(err).split())})",
                operation="joining the process group",
            ) from err
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(f"cuda:{local_rank}") if backend == "nccl" else torch.device("cpu")
    return Context(dist.get_rank(), dist.get_world_size(), local_rank, device, backend)


def is_main() -> bool:
    """True on rank 0, or when there is no process group: the process that writes files
    (:func:`recede.parallel.state.current`)."""
    return current().is_main


def shutdown() -> None:
    """Leave the process group, if this process is in one."""
    if dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def _collective(what: str) -> Iterator[None]:
    """Turn a backend error of a collective into a :class:`RankFailure` that says what to check."""
    try:
        yield
    except RuntimeError as err:
        if isinstance(err, RankFailure):
            raise
        raise RankFailure(
            f"{current()}: {what} failed: another rank died, hung past "
            f"the collective timeout, or ran a different collective ({err})",
            operation=what,
        ) from err


def buckets(tensors: Sequence[torch.Tensor], cap_bytes: int) -> list[list[torch.Tensor]]:
    """Split ``tensors`` into groups of one device and dtype, each at most ``cap_bytes``.

    Order is kept within a group; a tensor larger than the cap is a bucket of its own.
    """
    groups: dict[tuple[torch.device, torch.dtype], list[list[torch.Tensor]]] = {}
    sizes: dict[tuple[torch.device, torch.dtype], int] = {}
    for t in tensors:
        key, nbytes = (t.device, t.dtype), t.numel() * t.element_size()
        bucket_list = groups.setdefault(key, [[]])
        if bucket_list[-1] and sizes[key] + nbytes > cap_bytes:
            bucket_list.append([])
            sizes[key] = 0
        bucket_list[-1].append(t)
        sizes[key] = sizes.get(key, 0) + nbytes
    return [b for bucket_list in groups.values() for b in bucket_list]


def _copy_back(flat: torch.Tensor, bucket: list[torch.Tensor]) -> None:
    """Copy the consecutive pieces of ``flat`` into the tensors of ``bucket``."""
    offset = 0
    for t in bucket:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def _all_reduce_sum_(tensors: Sequence[torch.Tensor], cap_bytes: int, what: str, divide_by: int = 1) -> None:
    """Sum ``tensors`` in place across ranks (then divide by ``divide_by``): flatten into
    buckets, start every bucket's all-reduce, then copy each result back as it arrives.  A
    contiguous tensor alone in its bucket (one above the cap) is reduced where it lies."""
    pending = []
    with _collective(what):
        for bucket in buckets(tensors, cap_bytes):
            alone = len(bucket) == 1 and bucket[0].is_contiguous()
            flat = bucket[0].view(-1) if alone else torch.cat([t.reshape(-1) for t in bucket])
            pending.append((bucket, flat, alone, dist.all_reduce(flat, async_op=True)))
        for bucket, flat, alone, work in pending:
            work.wait()
            if divide_by != 1:
                flat.div_(divide_by)
            if not alone:
                _copy_back(flat, bucket)


def _broadcast_(tensors: Sequence[torch.Tensor], cap_bytes: int, what: str) -> None:
    """Overwrite ``tensors`` in place with rank 0's values, bucket by bucket."""
    with _collective(what), torch.no_grad():
        for bucket in buckets(tensors, cap_bytes):
            flat = torch.cat([t.reshape(-1) for t in bucket])
            dist.broadcast(flat, src=0)
            _copy_back(flat, bucket)


class DataParallel:
    """Any method with ``backward(x, y)``, trained on W ranks as one method on W× the batch.

    >>> ctx = init_from_env()
    >>> method = DataParallel(build_method(net, "mpc:4"), net)
    >>> for x, y in batches(train_set, B, True, seed, epoch, ctx.rank, ctx.world_size):
    ...     opt.zero_grad(); loss = method.backward(x, y); opt.step()

    At construction every parameter and buffer of ``module`` (default ``method.net``; pass the
    whole model when the method trains a view of it, as LoCo's regrouped stages, which leave
    out the heads it does not use) is overwritten with rank 0's values, so all ranks start
    identical.  :meth:`backward` runs the wrapped method on this rank's batch, which fills
    ``.grad`` with the local g_h, then replaces each ``.grad`` by its mean over the ranks
    (bucketed all-reduce, buckets of ``bucket_mb`` MiB).  With equal
    per-rank batch sizes this equals the gradient of the whole W·B batch, so every rank applies
    the same optimizer step and the parameters stay identical.  A parameter that has a
    gradient on some rank but not on another counts as zero there.

    ``backward`` returns the **mean of the ranks' losses** L(x_T) (the loss of the W·B batch),
    so epoch losses and Paper A's lr × 0.9 rule agree on every rank.  If any rank's loss is not
    finite, every rank raises :class:`~recede.core.engine.NonFiniteLossError` and no gradient is
    reduced.  With ``broadcast_buffers`` (as DDP) rank 0's buffers, e.g. BatchNorm running
    statistics, are copied to all ranks before each step.

    A wrapped method with a ``share_refreshes(workers)`` hook
    (:class:`recede.bpm.estimator.BPModified`'s refresh, Paper B Algorithm 1) gets this wrapper
    as its :class:`~recede.bpm.workers.Workers`: the refresh statistics are summed across ranks
    (:meth:`sum_statistics`), so the means and covariance traces, hence a, λ and the offset
    Δ, are those of all ranks' samples together and the same everywhere.  When it draws its
    own refresh micro-batches, the ranks share them out (:meth:`share`; B' is per refresh, not
    per rank), and an unset ``batch_size`` (the B of Paper B eq. 16) becomes the global batch
    W × B.  So W ranks of batch B reproduce one process of batch W·B, refreshes included.  Other
    attributes (``net``, ``last_losses``, ``horizon``...) are the wrapped method's.
    """

    def __init__(
        self,
        method: Method,
        module: nn.Module | None = None,
        bucket_mb: float = DEFAULT_BUCKET_MB,
        broadcast_buffers: bool = True,
    ) -> None:
        net = getattr(method, "net", None) if module is None else module
        if not isinstance(net, nn.Module):
            raise ValueError(
                f"DataParallel needs a module, or a method with a .net module; got "
                f"{type(method).__name__} and module={module!r}"
            )
        if not bucket_mb > 0:
            raise ValueError(f"bucket_mb must be positive, got {bucket_mb}")
        self.method, self.module = method, net
        self.cap_bytes = max(1, int(bucket_mb * 2**20))
        self.broadcast_buffers = broadcast_buffers
        self.world_size = current().world_size
        self.params = [p for p in net.parameters() if p.requires_grad]
        share_refreshes = getattr(method, "share_refreshes", None)
        if callable(share_refreshes):  # BP-modified: one refresh over all ranks (recede.bpm.workers)
            share_refreshes(self)
        if self.world_size > 1:
            _broadcast_([*net.parameters(), *net.buffers()], self.cap_bytes, "broadcasting rank 0's parameters")

    def share(self, micro_batches: Iterator[T]) -> Iterator[T]:
        """This rank's part of a refresh's micro-batches (the same sequence on every rank):
        every world_size-th, so the ranks split the B' samples of a single-process refresh."""
        if self.world_size == 1:
            return micro_batches
        return itertools.islice(micro_batches, current().rank, None, self.world_size)

    def __getattr__(self, name: str):
        if name == "method":
            raise AttributeError(name)
        return getattr(self.method, name)

    def backward(self, x: torch.Tensor, y: torch.Tensor, *, scaler: torch.amp.GradScaler | None = None) -> float:
        """Local g_h into ``.grad``, then ``.grad`` ← mean over ranks; returns the ranks' mean loss.

        A ``scaler`` goes to the wrapped method; an overflow on one rank reaches every rank
        through the all-reduce, so every rank's ``scaler.step`` skips the same step."""
        if self.world_size == 1:
            return self.method.backward(x, y, scaler=scaler)
        buffers = list(self.module.buffers())
        if self.broadcast_buffers and buffers:
            _broadcast_(buffers, self.cap_bytes, "broadcasting rank 0's buffers")
        try:
            loss, failure = self.method.backward(x, y, scaler=scaler), None
        except NonFiniteLossError as err:
            loss, failure = math.nan, err
        loss = self.reduce_gradients(loss)
        if failure is not None:
            raise failure
        return loss

    def reduce_gradients(self, loss: float = 0.0) -> float:
        """Replace every trainable parameter's ``.grad`` by its mean over the ranks.

        One small all-reduce carries ``loss`` and which parameters have a gradient on which
        rank; then the gradients travel in buckets.  Returns the ranks' mean ``loss``.
        """
        params = self.params
        device = params[0].device if params else torch.device("cpu")
        header = torch.tensor([loss] + [p.grad is not None for p in params], dtype=torch.float64, device=device)
        with _collective("the all-reduce of losses and gradient flags"):
            dist.all_reduce(header)
        mean_loss = float(header[0]) / self.world_size
        if not math.isfinite(mean_loss):
            raise NonFiniteLossError(
                f"a rank's loss is not finite (mean over {self.world_size} "
                f"ranks: {mean_loss}); gradients were not reduced"
            )
        grads = []
        for p, anywhere in zip(params, header[1:].tolist()):
            if anywhere and p.grad is None:
                p.grad = torch.zeros_like(p)
            if p.grad is not None:
                if p.grad.is_sparse:
                    raise ValueError("DataParallel averages dense gradients only; a parameter has a sparse .grad")
                grads.append(p.grad)
        _all_reduce_sum_(grads, self.cap_bytes, "the all-reduce of gradients", self.world_size)
        return mean_loss

    def sum_statistics(self, stats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Replace each tensor of ``stats`` (BP-modified's sufficient statistics, all sums) by
        its sum over all ranks, in place and in bucketed all-reduces; returns ``stats``."""
        bad = [k for k, v in stats.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise ValueError(f"statistics must be tensors; {', '.join(bad)} are not")
        if self.world_size > 1:
            with torch.no_grad():
                _all_reduce_sum_(list(stats.values()), self.cap_bytes, "the all-reduce of statistics")
        return stats


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
