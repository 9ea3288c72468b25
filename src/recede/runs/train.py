"""The training loop: any method with ``backward(x, y)``, any ``torch.optim`` optimizer.

The loop is the ordinary one — ``zero_grad``, ``method.backward(x, y)``, ``optimizer.step()`` —
plus Paper A's learning-rate rule (App. D.2: multiply lr by 0.9 whenever the epoch's training
loss increases), deterministic shuffling (epoch e is shuffled by a generator seeded with
``seed`` and e, so a run is reproducible), evaluation after each epoch, and a progress bar.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from recede.core.blocks import BlockNet, samples_in, to_device
from recede.core.engine import NonFiniteLossError


class LossIncreaseDecay:
    """Paper A App. D.2: ``lr ← factor · lr`` whenever an epoch's loss exceeds the previous one."""

    def __init__(self, optimizer: torch.optim.Optimizer, factor: float = 0.9) -> None:
        if not 0 < factor <= 1:
            raise ValueError(f"lr decay factor must be in (0, 1], got {factor}")
        self.optimizer = optimizer
        self.factor = factor
        self.previous: float | None = None

    def step(self, epoch_loss: float) -> None:
        if self.previous is not None and epoch_loss > self.previous:
            for group in self.optimizer.param_groups:
                group["lr"] *= self.factor
        self.previous = epoch_loss

    def state_dict(self) -> dict:
        return {"factor": self.factor, "previous": self.previous}

    def load_state_dict(self, state: dict) -> None:
        self.factor, self.previous = state["factor"], state["previous"]


def make_optimizer(
    params, name: str = "sgd", lr: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """``sgd`` (with optional momentum) or ``adam``."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; use sgd or adam")


def batches(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """A loader whose shuffle order depends only on (seed, epoch).

    With ``world_size`` > 1 it yields rank ``rank``'s shard of that same order: rank r takes
    every world_size-th index from r (padded with the first indices to a multiple of
    ``world_size``, as ``DistributedSampler`` does), so the ranks' i-th batches together are
    the i-th batch of ``world_size × batch_size`` that one process draws.
    """
    if len(dataset) == 0:  # type: ignore[arg-type]  # torch's Dataset type has no __len__; ours all do
        raise ValueError("cannot iterate over an empty dataset")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size = {world_size}), got {rank}")
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch) if shuffle else None
    if world_size == 1:
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)
    n = len(dataset)  # type: ignore[arg-type]  # torch's Dataset type has no __len__; ours all do
    indices: Dataset = range(n)  # type: ignore[assignment]  # a range is a map-style dataset at run time
    order = next(iter(DataLoader(indices, batch_size=n, shuffle=shuffle, generator=generator)))
    total = -(-n // world_size) * world_size
    padded = order.repeat(-(-total // n))[:total]
    return DataLoader(dataset, batch_size=batch_size, sampler=padded[rank::world_size].tolist())


@torch.no_grad()
def evaluate(
    net: BlockNet,
    dataset: Dataset,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    classification: bool = False,
    metrics: Callable[[float], dict[str, float]] | None = None,
) -> dict[str, float]:
    """Mean final loss L(x_T) over ``dataset`` (and accuracy for classification), plus
    ``metrics(loss)`` (e.g. :meth:`recede.data.Task.metrics`: bits per byte of an LM)."""
    was_training = net.training
    net.eval()
    total, correct, count = 0.0, 0, 0
    for x, y in batches(dataset, batch_size):
        x, y = to_device(x, device), to_device(y, device)
        prediction = net(x)
        total += float(net.loss_fn(prediction, y)) * samples_in(y)
        if classification:
            correct += int((prediction.argmax(dim=1) == y).sum())
        count += samples_in(y)
    net.train(was_training)
    result = {"loss": total / count}
    if classification:
        result["accuracy"] = correct / count
    if metrics is not None:
        result |= metrics(result["loss"])
    return result


@dataclass
class EpochRecord:
    """What one epoch produced."""

    epoch: int
    train_loss: float
    lr: float
    seconds: float
    steps: int
    test: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class LoopState:
    """Where a run stands, enough to resume it exactly: the current epoch, the batches of it
    already done with their loss sum, and the records of the epochs finished."""

    epoch: int = 0
    step: int = 0
    loss_sum: float = 0.0
    seen: int = 0
    global_step: int = 0
    history: list[EpochRecord] = field(default_factory=list)

    def state_dict(self) -> dict:
        return {**asdict(self), "history": [r.as_dict() for r in self.history]}

    @classmethod
    def from_state_dict(cls, state: dict) -> LoopState:
        return cls(**{**state, "history": [EpochRecord(**r) for r in state["history"]]})


def train(
    net: BlockNet,
    method,
    train_set: Dataset,
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    batch_size: int,
    test_set: Dataset | None = None,
    seed: int = 0,
    lr_rule: LossIncreaseDecay | None = None,
    classification: bool = False,
    device: torch.device | str = "cpu",
    state: LoopState | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    progress: bool = True,
    description: str = "train",
    rank: int = 0,
    world_size: int = 1,
    metrics: Callable[[float], dict[str, float]] | None = None,
) -> list[EpochRecord]:
    """Train ``net`` with ``method`` from ``state`` (default: the start) to the end of ``epochs``.

    ``state`` is updated in place after every step, so ``on_step(epoch, step, loss)`` (run after
    each optimizer step) can checkpoint it; ``on_epoch(record)`` runs after each epoch.  A run
    resumed from a saved state skips the batches of the current epoch already done: the shuffle
    of epoch e depends only on (seed, e), so it continues exactly where it stopped.
    ``rank``/``world_size``: train on this rank's shard of each epoch (see :func:`batches`),
    with ``method`` wrapped in :class:`recede.parallel.data_parallel.DataParallel`.  ``metrics`` derives
    further test metrics from the test loss (:func:`evaluate`).
    A non-finite loss raises :class:`~recede.core.engine.NonFiniteLossError` naming the step, before
    the optimizer touches the parameters.  Returns the records of every epoch of the run.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    state = state if state is not None else LoopState()
    if state.epoch > epochs:
        raise ValueError(f"the run is already at epoch {state.epoch}, beyond epochs = {epochs}")
    steps_per_epoch = len(batches(train_set, batch_size, rank=rank, world_size=world_size))
    remaining = (epochs - state.epoch) * steps_per_epoch - state.step
    with _progress(progress, description, remaining, device) as advance:
        while state.epoch < epochs:
            net.train()
            start = time.perf_counter()
            loader = batches(train_set, batch_size, True, seed, state.epoch, rank, world_size)
            for x, y in itertools.islice(loader, state.step, None):
                x, y = to_device(x, device), to_device(y, device)
                optimizer.zero_grad(set_to_none=True)
                try:
                    loss = method.backward(x, y)
                except NonFiniteLossError as err:
                    raise NonFiniteLossError(
                        f"step {state.global_step + 1} (epoch {state.epoch + 1}, batch {state.step + 1}): {err}"
                    ) from None
                optimizer.step()
                state.loss_sum += loss * samples_in(y)
                state.seen += samples_in(y)
                state.step += 1
                state.global_step += 1
                advance(loss, optimizer.param_groups[0]["lr"])
                if on_step is not None:
                    on_step(state.epoch, state.step - 1, loss)
            record = EpochRecord(
                state.epoch,
                state.loss_sum / state.seen,
                optimizer.param_groups[0]["lr"],
                time.perf_counter() - start,
                state.step,
            )
            if lr_rule is not None:
                lr_rule.step(record.train_loss)
            if test_set is not None:
                record.test = evaluate(net, test_set, device=device, classification=classification, metrics=metrics)
            state.history.append(record)
            state.epoch, state.step, state.loss_sum, state.seen = state.epoch + 1, 0, 0.0, 0
            if on_epoch is not None:
                on_epoch(record)
    return state.history


class _progress:
    """A rich progress bar showing loss, lr, steps/s and memory, or nothing when disabled.

    Memory is CUDA allocated bytes on a GPU, else the process's peak resident set size.
    """

    def __init__(self, enabled: bool, description: str, total: int, device: torch.device | str = "cpu") -> None:
        self.enabled, self.description, self.total = enabled, description, total
        self.cuda = torch.device(device).type == "cuda"

    def _memory_mib(self) -> float:
        if self.cuda:
            return torch.cuda.memory_allocated() / 2**20
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux

    def __enter__(self) -> Callable[[float, float], None]:
        if not self.enabled:
            return lambda loss, lr: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "loss {task.fields[loss]:.4g}  lr {task.fields[lr]:.3g}  "
                "{task.fields[rate]:.1f} steps/s  {task.fields[mem]:.0f} MiB"
            ),
            TimeRemainingColumn(),
            transient=False,
        )
        self.bar.__enter__()
        task = self.bar.add_task(
            self.description, total=self.total, loss=float("nan"), lr=float("nan"), rate=0.0, mem=self._memory_mib()
        )
        start, done = time.perf_counter(), [0]

        def advance(loss: float, lr: float) -> None:
            done[0] += 1
            rate = done[0] / max(time.perf_counter() - start, 1e-9)
            self.bar.update(task, advance=1, loss=loss, lr=lr, rate=rate, mem=self._memory_mib())

        return advance

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self.bar.__exit__(*exc)
