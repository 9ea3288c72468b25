"""The training loop: any method with ``backward(x, y)``, any ``torch.optim`` optimizer.

The loop is the ordinary one — ``zero_grad``, ``method.backward(x, y)``, ``optimizer.step()`` —
plus Paper A's learning-rate rule (App. D.2: multiply lr by 0.9 whenever the epoch's training
loss increases), deterministic shuffling (epoch e is shuffled by a generator seeded with
``seed`` and e, so a run is reproducible), evaluation after each epoch, and a progress bar.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch.utils.data import DataLoader, Dataset

from recede.blocks import BlockNet


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


def make_optimizer(params, name: str = "sgd", lr: float = 0.01, momentum: float = 0.0,
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
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


def batches(dataset: Dataset, batch_size: int, shuffle: bool = False, seed: int = 0,
            epoch: int = 0, rank: int = 0, world_size: int = 1) -> DataLoader:
    """A loader whose shuffle order depends only on (seed, epoch).

    With ``world_size`` > 1 it yields rank ``rank``'s shard of that same order: rank r takes
    every world_size-th index from r (padded with the first indices to a multiple of
    ``world_size``, as ``DistributedSampler`` does), so the ranks' i-th batches together are
    the i-th batch of ``world_size × batch_size`` that one process draws.
    """
    if len(dataset) == 0:
        raise ValueError("cannot iterate over an empty dataset")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size = {world_size}), got {rank}")
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch) if shuffle else None
    if world_size == 1:
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)
    n = len(dataset)
    order = next(iter(DataLoader(range(n), batch_size=n, shuffle=shuffle, generator=generator)))
    total = -(-n // world_size) * world_size
    padded = order.repeat(-(-total // n))[:total]
    return DataLoader(dataset, batch_size=batch_size, sampler=padded[rank::world_size].tolist())


@torch.no_grad()
def evaluate(net: BlockNet, dataset: Dataset, batch_size: int = 512,
             device: torch.device | str = "cpu", classification: bool = False) -> dict[str, float]:
    """Mean final loss L(x_T) over ``dataset`` (and accuracy for classification)."""
    was_training = net.training
    net.eval()
    total, correct, count = 0.0, 0, 0
    for x, y in batches(dataset, batch_size):
        x, y = x.to(device), y.to(device)
        prediction = net(x)
        total += float(net.loss_fn(prediction, y)) * len(y)
        if classification:
            correct += int((prediction.argmax(dim=1) == y).sum())
        count += len(y)
    net.train(was_training)
    result = {"loss": total / count}
    if classification:
        result["accuracy"] = correct / count
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


def train(net: BlockNet, method, train_set: Dataset, optimizer: torch.optim.Optimizer, *,
          epochs: int, batch_size: int, test_set: Dataset | None = None, seed: int = 0,
          lr_rule: LossIncreaseDecay | None = None, classification: bool = False,
          device: torch.device | str = "cpu", start_epoch: int = 0,
          on_step: Callable[[int, int, float], None] | None = None,
          on_epoch: Callable[[EpochRecord], None] | None = None,
          progress: bool = True, description: str = "train", rank: int = 0,
          world_size: int = 1) -> list[EpochRecord]:
    """Train ``net`` with ``method`` for epochs ``start_epoch .. epochs-1``.

    ``rank``/``world_size``: train on this rank's shard of each epoch (see :func:`batches`),
    with ``method`` wrapped in :class:`recede.distributed.DataParallel`.

    ``on_step(epoch, step, loss)`` runs after each optimizer step and ``on_epoch(record)`` after
    each epoch (checkpoints, logs).  Returns one :class:`EpochRecord` per epoch run.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    history: list[EpochRecord] = []
    steps_per_epoch = len(batches(train_set, batch_size, rank=rank, world_size=world_size))
    with _progress(progress, description, (epochs - start_epoch) * steps_per_epoch) as advance:
        for epoch in range(start_epoch, epochs):
            net.train()
            start, loss_sum, seen = time.perf_counter(), 0.0, 0
            loader = batches(train_set, batch_size, True, seed, epoch, rank, world_size)
            for step, (x, y) in enumerate(loader):
                x, y = x.to(device), y.to(device)
                optimizer.zero_grad(set_to_none=True)
                loss = method.backward(x, y)
                optimizer.step()
                loss_sum += loss * len(y)
                seen += len(y)
                advance(loss, optimizer.param_groups[0]["lr"])
                if on_step is not None:
                    on_step(epoch, step, loss)
            record = EpochRecord(epoch, loss_sum / seen, optimizer.param_groups[0]["lr"],
                                 time.perf_counter() - start, step + 1)
            if lr_rule is not None:
                lr_rule.step(record.train_loss)
            if test_set is not None:
                record.test = evaluate(net, test_set, device=device, classification=classification)
            history.append(record)
            if on_epoch is not None:
                on_epoch(record)
    return history


class _progress:
    """A rich progress bar showing loss and lr, or nothing when disabled."""

    def __init__(self, enabled: bool, description: str, total: int) -> None:
        self.enabled, self.description, self.total = enabled, description, total

    def __enter__(self) -> Callable[[float, float], None]:
        if not self.enabled:
            return lambda loss, lr: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("loss {task.fields[loss]:.4g}  lr {task.fields[lr]:.3g}"),
                            TimeRemainingColumn(), transient=False)
        self.bar.__enter__()
        task = self.bar.add_task(self.description, total=self.total, loss=float("nan"), lr=float("nan"))
        return lambda loss, lr: self.bar.update(task, advance=1, loss=loss, lr=lr)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.bar.__exit__(*exc)
