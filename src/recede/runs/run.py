"""One training run of one method on one workload: the unit ``train``, ``compare`` and ``demo``
are made of.

:func:`run_method` builds the model and the method, trains, checkpoints every N steps and at
the end (:mod:`recede.runs.checkpoint`), resumes from the last checkpoint when asked, logs to
TensorBoard when asked, and measures the memory a step costs (:func:`recede.measure.usage.measure_paid`:
saved activations over step and refresh, the whole training state, CUDA peak on a GPU).
:func:`add_workload_options` declares the options every such command shares.
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from recede import data, models
from recede.runs import checkpoint
from recede.parallel import data_parallel as distributed
from recede.runs import preflight
from recede.bpm.scalars import SCALINGS
from recede.config import float_range, int_range, key_values, positive_float
from recede.core.engine import NonFiniteLossError
from recede.methods import MethodSpec, build_method, parse_method
from recede.runs.train import EpochRecord, LoopState, LossIncreaseDecay, batches, make_optimizer, train
from recede.measure.usage import PaidMemory, measure_paid

# options that define what a run computes: a checkpoint resumes only a run that agrees on them
IDENTITY = ("model", "data", "model_opt", "data_opt", "batch_size", "optimizer", "lr", "momentum",
            "lr_decay", "seed", "bpm_period", "bpm_samples", "bpm_micro_batch", "bpm_scaling",
            "bpm_a", "bpm_lam", "init", "init_skip")


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
    p.add_argument("--init", default=None, metavar="FILE",
                   help="start every run from this state dict (a `recede pretrain` checkpoint, or "
                        "your own .safetensors or weights-only .pt); names and shapes must match "
                        "the model except --init-skip (docs/finetune.md)")
    p.add_argument("--init-skip", action="append", default=None, metavar="PATTERN",  # None: a run before --init resumes
                   help="with --init: the model's keys matching this glob (e.g. 'heads.*') keep "
                        "their fresh initialisation (repeatable)")
    bpm = p.add_argument_group("BP-modified methods (bpm-...; Paper B Algorithm 1)")
    bpm.add_argument("--bpm-period", type=int_range(1), default=None, metavar="K",
                     help="steps between offset refreshes (default: one epoch)")
    bpm.add_argument("--bpm-samples", type=int_range(2), default=None, metavar="B'",
                     help="samples per refresh (default: 1%% of K·B, at least two micro-batches)")
    bpm.add_argument("--bpm-micro-batch", type=int_range(1), default=8, metavar="b'",
                     help="micro-batch size of a refresh (its memory is BP's on b' samples)")
    bpm.add_argument("--bpm-scaling", default="robust", choices=list(SCALINGS),
                     help="robust (default: a = 1, λ only where a held-out test says the offset pays; lost to the local "
                          "method in none of the study's 15 cases but can elsewhere, docs/paper-b.md), paper (Paper B eqs. 16-19 "
                          "as printed), bias (λ = 0, a = a_bias, Table 3) or fixed (--bpm-a, --bpm-lam)")
    bpm.add_argument("--bpm-a", type=float_range(-math.inf, math.inf, True, True), default=None, metavar="A",
                     help="the fixed scale a of the local gradient (with --bpm-scaling fixed)")
    bpm.add_argument("--bpm-lam", type=float_range(0.0, 1.0), default=None, metavar="λ",
                     help="the fixed weight λ ∈ [0, 1] of the offset (with --bpm-scaling fixed)")


@dataclass
class Workload:
    """A task, how to build a fresh model for it, and this process's rank among ``world_size``
    data-parallel processes (:mod:`recede.parallel.data_parallel`)."""

    task: data.Task
    model: str
    model_options: dict[str, Any]
    device: torch.device
    rank: int = 0
    world_size: int = 1
    init: str | None = None  # --init: the state dict every fresh model starts from
    init_skip: tuple[str, ...] = ()  # --init-skip: keys that keep their fresh initialisation

    @classmethod
    def from_args(cls, args: argparse.Namespace, rank: int = 0, world_size: int = 1) -> Workload:
        """The workload of the command's options, checked before any training
        (:mod:`recede.runs.preflight`): the device, the data and model options, and that the
        model accepts the data."""
        device = preflight.device(args.device)
        if args.threads:
            torch.set_num_threads(args.threads)
        task = preflight.load_data(args.data, key_values(args.data_opt, "--data-opt"))
        options = key_values(args.model_opt, "--model-opt")
        net = preflight.build_model(args.model, task, options, device)
        init, skip = getattr(args, "init", None), tuple(getattr(args, "init_skip", None) or ())
        if init is not None or skip:
            from recede.runs.pretrain import describe_init, load_init

            load_init(net, init, skip)  # a file that does not fit stops here, before anything is written
            if rank == 0:
                print(describe_init(net, init, skip))
        preflight.probe(net, task, device, f"model {args.model!r}")
        return cls(task, args.model, options, device, rank, world_size, init, skip)

    def method(self, net, spec: MethodSpec, args: argparse.Namespace):
        """The method object that trains ``net`` by ``spec`` on this workload at
        ``args.batch_size`` per process; ``bpm-`` methods draw their offsets from the training
        set with the ``--bpm-*`` settings, B being the global batch."""
        return build_method(net, spec, refresh_data=self.task.train,
                            batch_size=args.batch_size * self.world_size, period=args.bpm_period,
                            offset_samples=args.bpm_samples, micro_batch=args.bpm_micro_batch,
                            scaling=args.bpm_scaling, a=args.bpm_a, lam=args.bpm_lam, seed=args.seed)

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
        net = models.build(self.model, self.task, **self.model_options).to(self.device)
        if self.init is not None:
            from recede.runs.pretrain import load_init

            load_init(net, self.init, self.init_skip)
        return net

    def batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first (unshuffled) training batch, on the device."""
        x, y = next(iter(batches(self.task.train, batch_size)))
        return x.to(self.device), y.to(self.device)


@dataclass
class MethodResult:
    """What one method's run produced; ``refreshes``: BP-modified offset refreshes it made."""

    label: str
    history: list[EpochRecord]
    memory: PaidMemory
    net: torch.nn.Module = field(repr=False)
    method: Any = field(repr=False)
    refreshes: int = 0
    tokens_per_step: int | None = None  # a language model's tokens per training step

    @property
    def final(self) -> EpochRecord:
        return self.history[-1]

    @property
    def steps(self) -> int:
        return sum(r.steps for r in self.history)

    @property
    def ms_per_step(self) -> float:
        """Mean wall time of a training step over the run (refreshes, optimizer steps, data
        loading and checkpoint writes included)."""
        return 1000 * sum(r.seconds for r in self.history) / self.steps

    def row(self) -> dict[str, Any]:
        extra = {f"test {k}": v for k, v in self.final.test.items() if k not in ("loss", "accuracy")}
        if self.tokens_per_step is not None:
            extra["tokens/s"] = self.tokens_per_step / (self.ms_per_step / 1000)
        return {"method": self.label, "train loss": self.final.train_loss,
                "test loss": self.final.test.get("loss"), "test acc": self.final.test.get("accuracy"),
                **extra, "ms/step": self.ms_per_step,
                "real MiB": None if self.memory.real_peak_bytes is None else self.memory.real_peak_bytes / 2**20,
                "saved MiB": self.memory.saved_peak_mib,
                "state MiB": self.memory.state_mib,
                "cuda peak MiB": None if self.memory.cuda_peak_bytes is None
                else self.memory.cuda_peak_bytes / 2**20}


def slug(spec: MethodSpec | str) -> str:
    """A file-name-safe name for a method: ``mpc:4`` → ``mpc-4``."""
    return re.sub(r"[^a-z0-9]+", "-", str(spec if isinstance(spec, str) else spec.label).lower()).strip("-")


def checkpoint_path(out: Path, spec: MethodSpec, seed: int | None = None) -> Path:
    """Where :func:`run_method` keeps the checkpoint of ``spec``'s run (of one ``seed`` of several)."""
    folder = out / "checkpoints" if seed is None else out / "checkpoints" / f"seed-{seed}"
    return folder / f"{slug(spec)}.pt"


def identity(args: argparse.Namespace) -> dict[str, Any]:
    """The :data:`IDENTITY` options of a command: a checkpoint resumes only a run that agrees."""
    return {k: getattr(args, k) for k in IDENTITY}


def run_method(workload: Workload, spec: MethodSpec | str, args: argparse.Namespace, *,
               out: Path, checkpoint_every: int = 0, resume: bool = False,
               tensorboard: bool = False, per_seed: bool = False) -> MethodResult:
    """Train a fresh model (seeded by ``args.seed``) with ``spec``; checkpoint to
    ``out/checkpoints/<method>.pt`` (``per_seed``: ``out/checkpoints/seed-<seed>/<method>.pt``)
    every ``checkpoint_every`` steps (0: only at the end).

    With ``resume`` and an existing checkpoint, the run continues from it; the checkpoint must
    come from a run with the same :data:`IDENTITY` options.  A non-finite loss stops the run
    with the step number; the last checkpoint written stays the good one.
    """
    spec = parse_method(spec) if isinstance(spec, str) else spec
    net = workload.build(args.seed)
    local = workload.method(net, spec, args)  # the method itself, measured on this rank below
    method = distributed.DataParallel(local, net) if workload.world_size > 1 else local
    writes = workload.rank == 0
    optimizer = make_optimizer(net.parameters(), args.optimizer, args.lr, args.momentum)
    lr_rule = LossIncreaseDecay(optimizer, args.lr_decay)
    path = checkpoint_path(out, spec, args.seed if per_seed else None)
    run_identity = identity(args) | {"method": spec.label}
    loop, has_checkpoint = LoopState(), resume and path.exists()
    if has_checkpoint:
        payload = checkpoint.read(path)
        preflight.check_same_run(payload["config"], run_identity, path)
        loop = checkpoint.restore(payload, net=net, optimizer=optimizer, lr_rule=lr_rule, method=method)
    writer = _tensorboard_writer(out / "tensorboard" / slug(spec)) if tensorboard and writes else None

    def save(finished: bool = False) -> None:
        nonlocal has_checkpoint
        if not writes:
            return
        checkpoint.save(path, net=net, optimizer=optimizer, loop=loop, lr_rule=lr_rule,
                        method=method, config=run_identity, finished=finished)
        has_checkpoint = True

    def on_step(epoch: int, step: int, loss: float) -> None:
        preflight.commit()  # training has begun: the earlier run --overwrite moved aside goes now
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
    memory = measure_paid(local, net, x, y, optimizer, workload.device)
    optimizer.zero_grad(set_to_none=True)
    return MethodResult(spec.label, history, memory, net, method, getattr(local, "refreshes", 0),
                        workload.tokens(args.batch_size * workload.world_size))



def _tensorboard_writer(folder: Path):
    preflight.require_package("tensorboard", "--tensorboard", "tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(folder))
