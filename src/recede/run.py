"""One training run of one method on one workload: the unit ``train``, ``compare`` and ``demo``
are made of.

:func:`run_method` builds the model and the method, trains, checkpoints every N steps and at
the end (:mod:`recede.checkpoint`), resumes from the last checkpoint when asked, logs to
TensorBoard when asked, and measures the saved-activation memory of one step
(:func:`recede.memory.measure`; CUDA peak on a GPU).  :func:`add_workload_options` declares the
options every such command shares.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from recede import checkpoint, data, distributed, models
from recede.config import float_range, int_range, positive_float
from recede.engine import NonFiniteLossError
from recede.memory import MemoryReport, measure
from recede.methods import MethodSpec, build_method, parse_method
from recede.train import EpochRecord, LoopState, LossIncreaseDecay, batches, make_optimizer, train

# options that define what a run computes: a checkpoint resumes only a run that agrees on them
IDENTITY = ("model", "data", "model_opt", "data_opt", "batch_size", "optimizer", "lr", "momentum",
            "lr_decay", "seed", "bpm_period", "bpm_samples", "bpm_micro_batch", "bpm_scaling")


def key_values(pairs: list[str]) -> dict[str, Any]:
    """``["width=10", "head=shared"]`` → ``{"width": 10, "head": "shared"}`` (YAML scalars)."""
    import yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"option {pair!r} is not of the form key=value")
        out[key.replace("-", "_")] = yaml.safe_load(value)
    return out


def add_workload_options(p: argparse.ArgumentParser, *, model: str = "resmlp", data_name: str = "trig",
                         epochs: int = 5, batch_size: int = 100, lr: float = 0.01,
                         out: str = "results/train") -> None:
    """The model, data, optimizer and output options shared by train, compare and demo."""
    p.add_argument("--model", default=model, help=f"one of: {', '.join(models.available())}")
    p.add_argument("--data", default=data_name, help=f"one of: {', '.join(data.available())}")
    p.add_argument("--model-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="model builder option, e.g. width=32 (repeatable)")
    p.add_argument("--data-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="dataset option, e.g. n=2000 (repeatable)")
    p.add_argument("--epochs", type=int_range(1), default=epochs)
    p.add_argument("--batch-size", type=int_range(1), default=batch_size)
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"])
    p.add_argument("--lr", type=positive_float, default=lr)
    p.add_argument("--momentum", type=float_range(0.0, 1.0, high_open=True), default=0.0)
    p.add_argument("--lr-decay", type=float_range(0.0, 1.0, low_open=True), default=0.9,
                   help="Paper A's rule: lr × this whenever the epoch loss rises (1 disables)")
    p.add_argument("--seed", type=int_range(0), default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int_range(0), default=0,
                   help="CPU threads for torch (0: torch's default); 1 is fastest for tiny models")
    p.add_argument("--out", default=out, help="results folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    bpm = p.add_argument_group("BP-modified methods (bpm-...; Paper B Algorithm 1)")
    bpm.add_argument("--bpm-period", type=int_range(1), default=None, metavar="K",
                     help="steps between offset refreshes (default: one epoch)")
    bpm.add_argument("--bpm-samples", type=int_range(2), default=None, metavar="B'",
                     help="samples per refresh (default: 1%% of K·B, at least two micro-batches)")
    bpm.add_argument("--bpm-micro-batch", type=int_range(1), default=8, metavar="b'",
                     help="micro-batch size of a refresh (its memory is BP's on b' samples)")
    bpm.add_argument("--bpm-scaling", default="optimal", choices=["optimal", "bias"],
                     help="optimal a, λ (Paper B eqs. 17-19) or λ = 0, a = a_bias (Table 3)")


@dataclass
class Workload:
    """A task, how to build a fresh model for it, and this process's rank among ``world_size``
    data-parallel processes (:mod:`recede.distributed`)."""

    task: data.Task
    model: str
    model_options: dict[str, Any]
    device: torch.device
    rank: int = 0
    world_size: int = 1

    @classmethod
    def from_args(cls, args: argparse.Namespace, rank: int = 0, world_size: int = 1) -> "Workload":
        device = torch.device(args.device)
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if device.type == "cuda" and (device.index or 0) >= count:
            raise ValueError(f"--device {args.device}: this machine has {count} CUDA device(s)")
        if args.threads:
            torch.set_num_threads(args.threads)
        workload = cls(data.load(args.data, **key_values(args.data_opt)), args.model,
                       key_values(args.model_opt), device, rank, world_size)
        workload.build(args.seed)  # fail now, on a wrong model option, not after other methods ran
        return workload

    def method(self, net, spec: MethodSpec, args: argparse.Namespace):
        """The method object that trains ``net`` by ``spec`` on this workload at
        ``args.batch_size`` per process; ``bpm-`` methods draw their offsets from the training
        set with the ``--bpm-*`` settings, B being the global batch."""
        return build_method(net, spec, refresh_data=self.task.train,
                            batch_size=args.batch_size * self.world_size, period=args.bpm_period,
                            offset_samples=args.bpm_samples, micro_batch=args.bpm_micro_batch,
                            scaling=args.bpm_scaling, seed=args.seed)

    def check_methods(self, specs: list[MethodSpec], args: argparse.Namespace) -> None:
        """Build each method once on a model, so a horizon or stage count outside [1, T]
        fails before any training."""
        net = self.build(0)
        for spec in specs:
            self.method(net, spec, args)

    @property
    def classification(self) -> bool:
        return self.task.kind == "classification"

    @property
    def quality(self) -> str:
        """The row column that ranks methods: test accuracy, an LM's bits per byte, else test loss."""
        return {"classification": "test acc", "language-model": "test bits/byte"}.get(self.task.kind, "test loss")

    @property
    def metric_columns(self) -> list[str]:
        """Result columns beside the losses: accuracy, or an LM's bits per byte, perplexity and tokens/s."""
        return {"classification": ["test acc"],
                "language-model": ["test bits/byte", "test perplexity", "tokens/s"]}.get(self.task.kind, [])

    def tokens(self, batch_size: int) -> int | None:
        """Tokens in a batch of ``batch_size`` sequences of a language model (None otherwise)."""
        return batch_size * self.task.input_shape[0] if self.task.kind == "language-model" else None

    def build(self, seed: int):
        torch.manual_seed(seed)
        return models.build(self.model, self.task, **self.model_options).to(self.device)

    def batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first (unshuffled) training batch, on the device."""
        x, y = next(iter(batches(self.task.train, batch_size)))
        return x.to(self.device), y.to(self.device)


@dataclass
class MethodResult:
    """What one method's run produced."""

    label: str
    history: list[EpochRecord]
    memory: MemoryReport
    net: torch.nn.Module = field(repr=False)
    method: Any = field(repr=False)
    tokens_per_step: int | None = None  # a language model's tokens per training step

    @property
    def final(self) -> EpochRecord:
        return self.history[-1]

    @property
    def ms_per_step(self) -> float:
        """Mean wall time of a training step over the run (checkpoint writes included)."""
        return 1000 * sum(r.seconds for r in self.history) / sum(r.steps for r in self.history)

    def row(self) -> dict[str, Any]:
        extra = {f"test {k}": v for k, v in self.final.test.items() if k not in ("loss", "accuracy")}
        if self.tokens_per_step is not None:
            extra["tokens/s"] = self.tokens_per_step / (self.ms_per_step / 1000)
        return {"method": self.label, "train loss": self.final.train_loss,
                "test loss": self.final.test.get("loss"), "test acc": self.final.test.get("accuracy"),
                **extra, "ms/step": self.ms_per_step, "saved MiB": self.memory.saved_peak_mib,
                "cuda peak MiB": None if self.memory.cuda_peak_bytes is None
                else self.memory.cuda_peak_bytes / 2**20}


def slug(spec: MethodSpec | str) -> str:
    """A file-name-safe name for a method: ``mpc:4`` → ``mpc-4``."""
    return re.sub(r"[^a-z0-9]+", "-", str(spec if isinstance(spec, str) else spec.label).lower()).strip("-")


def run_method(workload: Workload, spec: MethodSpec | str, args: argparse.Namespace, *,
               out: Path, checkpoint_every: int = 0, resume: bool = False,
               tensorboard: bool = False) -> MethodResult:
    """Train a fresh model (seeded by ``args.seed``) with ``spec``; checkpoint to
    ``out/checkpoints/<method>.pt`` every ``checkpoint_every`` steps (0: only at the end).

    With ``resume`` and an existing checkpoint, the run continues from it; the checkpoint must
    come from a run with the same :data:`IDENTITY` options.  A non-finite loss stops the run
    with the step number; the last checkpoint written stays the good one.
    """
    spec = parse_method(spec) if isinstance(spec, str) else spec
    net = workload.build(args.seed)
    method = workload.method(net, spec, args)
    if workload.world_size > 1:
        method = distributed.DataParallel(method, net)
    writes = workload.rank == 0
    optimizer = make_optimizer(net.parameters(), args.optimizer, args.lr, args.momentum)
    lr_rule = LossIncreaseDecay(optimizer, args.lr_decay)
    path = out / "checkpoints" / f"{slug(spec)}.pt"
    identity = {k: getattr(args, k) for k in IDENTITY} | {"method": spec.label}
    loop, has_checkpoint = LoopState(), resume and path.exists()
    if has_checkpoint:
        payload = checkpoint.read(path)
        _check_same_run(payload["config"], identity, path)
        loop = checkpoint.restore(payload, net=net, optimizer=optimizer, lr_rule=lr_rule, method=method)
    writer = _tensorboard_writer(out / "tensorboard" / slug(spec)) if tensorboard and writes else None

    def save(finished: bool = False) -> None:
        nonlocal has_checkpoint
        if not writes:
            return
        checkpoint.save(path, net=net, optimizer=optimizer, loop=loop, lr_rule=lr_rule,
                        method=method, config=identity, finished=finished)
        has_checkpoint = True

    def on_step(epoch: int, step: int, loss: float) -> None:
        if writer is not None:
            writer.add_scalar("loss/train_step", loss, loop.global_step)
        if checkpoint_every and loop.global_step % checkpoint_every == 0:
            save()

    def on_epoch(record: EpochRecord) -> None:
        if writer is not None:
            writer.add_scalar("loss/train_epoch", record.train_loss, record.epoch + 1)
            writer.add_scalar("lr", record.lr, record.epoch + 1)
            for name, value in record.test.items():
                writer.add_scalar(f"test/{name}", value, record.epoch + 1)

    try:
        history = train(net, method, workload.task.train, optimizer, epochs=args.epochs,
                        batch_size=args.batch_size, test_set=workload.task.test, seed=args.seed,
                        lr_rule=lr_rule, classification=workload.classification,
                        device=workload.device, state=loop, on_step=on_step, on_epoch=on_epoch,
                        progress=writes and not args.no_progress, description=spec.label,
                        rank=workload.rank, world_size=workload.world_size, metrics=workload.task.metrics)
    except NonFiniteLossError as err:
        kept = f"the last good checkpoint is {path}" if has_checkpoint else "no checkpoint was written"
        raise NonFiniteLossError(f"{spec.label}: {err}; {kept}") from None
    finally:
        if writer is not None:
            writer.close()
    save(finished=True)
    x, y = workload.batch(args.batch_size)
    _, memory = measure(lambda: method.backward(x, y), module=net, device=workload.device)
    optimizer.zero_grad(set_to_none=True)
    return MethodResult(spec.label, history, memory, net, method,
                        workload.tokens(args.batch_size * workload.world_size))


def _check_same_run(saved: dict[str, Any], identity: dict[str, Any], path: Path) -> None:
    differ = sorted(k for k in identity if saved.get(k) != identity[k])
    if differ:
        detail = ", ".join(f"{k}: {saved.get(k)!r} → {identity[k]!r}" for k in differ)
        raise ValueError(f"--resume: checkpoint {path} was written by a different run ({detail}); "
                         "use the same options or another --out")


def _tensorboard_writer(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError("--tensorboard needs the tensorboard package: "
                         "pip install 'recede[tensorboard]'") from None
    return SummaryWriter(log_dir=str(folder))
