"""One run path: :func:`run` takes a :class:`~recede.runs.config.RunConfig` and does what
``recede train``, ``compare``, ``demo``, the pipeline and the ``reproduce`` studies all do.

:func:`check` checks everything the config asks for before anything is written (the workload's
model built once, :class:`Workload`).  :func:`run` then starts the results folder, trains every
method from every seed (:func:`train_method`, the one place that builds a model, its method, an
optimizer and trains: checkpoints every N steps and at the end, :mod:`recede.runs.checkpoint`;
resume; TensorBoard), measures what a step costs as paid (:func:`recede.measure.usage.measure_paid`,
and with ``measure.frontier`` the comparison of :mod:`recede.runs.compare`), and writes the
results folder (:mod:`recede.runs.results`).  From Python: ``recede.run(recede.RunConfig(...))``.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from recede import data, models
from recede.core.blocks import BlockNet
from recede.core.engine import NonFiniteLossError
from recede.measure.usage import PaidMemory, measure_paid, meter
from recede.methods import MethodSpec, build_method, parse_method
from recede.parallel import data_parallel as distributed
from recede.runs import checkpoint, preflight
from recede.runs.config import RunConfig
from recede.runs.train import EpochRecord, LoopState, LossIncreaseDecay, batches, make_optimizer, train

# options that define what a run computes: a checkpoint resumes only a run that agrees on them
IDENTITY = (
    "model",
    "data",
    "model_opt",
    "data_opt",
    "batch_size",
    "optimizer",
    "lr",
    "momentum",
    "lr_decay",
    "seed",
    "bpm_period",
    "bpm_samples",
    "bpm_micro_batch",
    "bpm_rule",
    "bpm_a",
    "bpm_lam",
    "init",
    "init_skip",
)


@dataclass
class Workload:
    """A task, how to build a fresh model for it, and this process's rank among ``world_size``
    data-parallel processes (:mod:`recede.parallel.data_parallel`).  ``net``: the model built
    once when the workload was checked (:meth:`from_config`), kept for the checks that need a
    model (its T, the methods' horizons, a checkpoint's shapes); training builds fresh ones.
    ``start``: a study's starting model (pretrained or adapted in memory): every fresh model is
    then a copy of it."""

    task: data.Task
    model: str
    model_options: dict[str, Any]
    device: torch.device
    rank: int = 0
    world_size: int = 1
    init: str | None = None  # --init: the state dict every fresh model starts from
    init_skip: tuple[str, ...] = ()  # --init-skip: keys that keep their fresh initialisation
    net: Any = field(default=None, repr=False)
    init_state: dict[str, torch.Tensor] | None = field(default=None, repr=False)  # init's tensors, read once
    start: BlockNet | None = field(default=None, repr=False)

    @classmethod
    def from_config(cls, config: RunConfig, rank: int = 0, world_size: int = 1) -> Workload:
        """The workload of ``config``, checked before any training (:mod:`recede.runs.preflight`):
        the device, the data and model options, and that the model accepts the data.  The
        model is built here once (:attr:`net`)."""
        w = config.workload
        device = preflight.device(config.loop.device)
        if config.loop.threads:
            torch.set_num_threads(config.loop.threads)
        task = preflight.load_data(w.data, dict(w.data_options))
        options = dict(w.model_options)
        net = preflight.build_model(w.model, task, options, device)
        init, skip = w.init, tuple(w.init_skip)
        if init is not None or skip:
            from recede.runs.pretrain import describe_init, load_init

            load_init(net, init, skip)  # a file that does not fit stops here, before anything is written
            if rank == 0:
                print(describe_init(net, init, skip))
        preflight.probe(net, task, device, f"model {w.model!r}")
        return cls(task, w.model, options, device, rank, world_size, init, skip, net)

    @classmethod
    def of(
        cls,
        task: data.Task,
        model: str,
        model_options: dict[str, Any],
        device: torch.device | str,
        init: str | None = None,
        init_skip: tuple[str, ...] = (),
    ) -> Workload:
        """The workload of a task already loaded (a study's, shared by its runs), every fresh
        model loaded from ``init`` (keys matching ``init_skip`` kept fresh) when given; its
        model built once for the checks (inside a forked RNG: the caller's random state is
        kept), so a file that does not fit stops here."""
        workload = cls(task, model, dict(model_options), torch.device(device), init=init, init_skip=tuple(init_skip))
        with torch.random.fork_rng(devices=[workload.device] if workload.device.type == "cuda" else []):
            workload.net = workload.build(0)
        return workload

    @classmethod
    def from_args(cls, args: Any, rank: int = 0, world_size: int = 1) -> Workload:
        """The workload of a command's parsed options (:meth:`RunConfig.from_options`)."""
        return cls.from_config(RunConfig.from_options(vars(args)), rank, world_size)

    def method(self, net, spec: MethodSpec, config: RunConfig | Any, seed: int | None = None):
        """The method object that trains ``net`` by ``spec`` on this workload at the config's
        batch size per process; ``bpm-`` methods draw their offsets from the training set with
        the config's BP-modified settings, B being the global batch."""
        config = config if isinstance(config, RunConfig) else RunConfig.from_options(vars(config))
        b = config.bpm
        return build_method(
            net,
            spec,
            refresh_data=self.task.train,
            batch_size=config.loop.batch_size * self.world_size,
            period=b.period,
            offset_samples=b.samples,
            micro_batch=b.micro_batch,
            rule=b.rule,
            a=b.a,
            lam=b.lam,
            seed=config.loop.seed if seed is None else seed,
        )

    def check_methods(self, specs: list[MethodSpec], config: RunConfig | Any) -> None:
        """Build each method once on the checked model, so a horizon or stage count outside
        [1, T] fails before any training."""
        net = self.net if self.net is not None else self.build(0)
        for spec in specs:
            self.method(net, spec, config)

    @property
    def T(self) -> int:
        """The number of blocks of the workload's model."""
        return (self.net if self.net is not None else self.build(0)).T

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
        return {
            "classification": ["test acc"],
            "language-model": ["test bits/byte", "test perplexity", "tokens/s"],
        }.get(self.task.kind, [])

    def tokens(self, batch_size: int) -> int | None:
        """Tokens in a batch of ``batch_size`` sequences of a language model (None otherwise)."""
        return batch_size * self.task.input_shape[0] if self.task.kind == "language-model" else None

    def build(self, seed: int) -> BlockNet:
        """A fresh model, the global RNG seeded with ``seed`` first: built (and ``init``
        loaded), or a copy of ``start``."""
        torch.manual_seed(seed)
        if self.start is not None:
            return copy.deepcopy(self.start).to(self.device)
        net = models.build(self.model, self.task, **self.model_options).to(self.device)
        if self.init is not None:
            from recede.runs.pretrain import load_init, read_init

            if self.init_state is None:
                self.init_state = read_init(self.init)
            load_init(net, self.init, self.init_skip, self.init_state)
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
    memory: PaidMemory | None  # None: a pipeline stage (its row holds its own), or measure.paid off
    net: BlockNet = field(repr=False)
    method: Any = field(repr=False)
    refreshes: int = 0
    tokens_per_step: int | None = None  # a language model's tokens per training step
    fixed_row: dict[str, Any] | None = None  # a pipeline stage's row (its own measurement)

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
        if self.fixed_row is not None:
            return dict(self.fixed_row)
        assert self.memory is not None  # every run but a pipeline stage's measures it
        extra = {f"test {k}": v for k, v in self.final.test.items() if k not in ("loss", "accuracy")}
        if self.tokens_per_step is not None:
            extra["tokens/s"] = self.tokens_per_step / (self.ms_per_step / 1000)
        return {
            "method": self.label,
            "train loss": self.final.train_loss,
            "test loss": self.final.test.get("loss"),
            "test acc": self.final.test.get("accuracy"),
            **extra,
            "ms/step": self.ms_per_step,
            "real MiB": None if self.memory.real_peak_bytes is None else self.memory.real_peak_bytes / 2**20,
            "saved MiB": self.memory.saved_peak_mib,
            "state MiB": self.memory.state_mib,
            "cuda peak MiB": None if self.memory.cuda_peak_bytes is None else self.memory.cuda_peak_bytes / 2**20,
        }


def slug(spec: MethodSpec | StudyMethod | str) -> str:
    """A file-name-safe name for a method: ``mpc:4`` → ``mpc-4``."""
    return re.sub(r"[^a-z0-9]+", "-", str(spec if isinstance(spec, str) else spec.label).lower()).strip("-")


def checkpoint_path(out: Path, spec: MethodSpec | StudyMethod, seed: int | None = None) -> Path:
    """Where :func:`run_method` keeps the checkpoint of ``spec``'s run (of one ``seed`` of several)."""
    folder = out / "checkpoints" if seed is None else out / "checkpoints" / f"seed-{seed}"
    return folder / f"{slug(spec)}.pt"


def identity(args: Any) -> dict[str, Any]:
    """The :data:`IDENTITY` options of a command's parsed options (:meth:`RunConfig.identity`):
    a checkpoint resumes only a run that agrees."""
    return RunConfig.from_options(vars(args)).identity()


def run_method(
    workload: Workload,
    spec: MethodSpec | str,
    args: Any,
    *,
    out: Path,
    checkpoint_every: int = 0,
    resume: bool = False,
    tensorboard: bool = False,
    per_seed: bool = False,
) -> MethodResult:
    """:func:`train_method` for a command's parsed options ``args``."""
    config = RunConfig.from_options(vars(args))
    loop = dataclasses.replace(config.loop, checkpoint_every=checkpoint_every, resume=resume)
    output = dataclasses.replace(config.output, tensorboard=tensorboard)
    config = dataclasses.replace(config, loop=loop, output=output)
    return train_method(workload, spec, config, out=out, per_seed=per_seed)


@dataclass
class Setup:
    """How one method trains one fresh model: ``method`` (what the loop calls ``backward`` on),
    the ``module`` whose state a checkpoint holds and the ``parameters`` the optimizer steps,
    the checkpoint ``path`` (None: none) and its ``identity``, the test set evaluated after
    each epoch (None: ``on_epoch`` evaluates, or ``measure.test`` is off), the data shard
    (``rank`` of ``world_size``), and
    ``finish(history, optimizer) -> MethodResult`` that measures the trained method.
    :func:`plain_setup` is a process's (or a data-parallel rank's);
    :func:`recede.parallel.pipeline.run.stage_setup` a pipeline stage's."""

    method: Any
    module: torch.nn.Module
    parameters: Any
    path: Path | None
    identity: dict[str, Any]
    finish: Callable[[list[EpochRecord], torch.optim.Optimizer], MethodResult]
    checkpoint_method: Any = None
    test_set: Any = None
    on_epoch: Callable[[EpochRecord], None] | None = None
    rank: int = 0
    world_size: int = 1


@dataclass
class StudyMethod:
    """A study's own method, which no method name describes (a
    :class:`~recede.horizon.schedule.HorizonSchedule`): ``build(net)`` makes it on the fresh
    model; ``label`` names it in the run's results."""

    label: str
    build: Callable[[BlockNet], Any]


def plain_setup(
    workload: Workload,
    spec: MethodSpec | StudyMethod,
    config: RunConfig,
    net: BlockNet,
    out: Path | None,
    per_seed: bool,
) -> Setup:
    """One process's run of ``spec`` on ``net`` (one rank's shard under data parallelism, the
    method wrapped in :class:`~recede.parallel.data_parallel.DataParallel`), measured after
    training by :func:`recede.measure.usage.measure_paid` (unless ``config.measure.paid`` is off)."""
    batch_size = config.loop.batch_size
    # the method itself, measured on this rank below
    local = spec.build(net) if isinstance(spec, StudyMethod) else workload.method(net, spec, config)
    method = distributed.DataParallel(local, net) if workload.world_size > 1 else local

    def finish(history: list[EpochRecord], optimizer: torch.optim.Optimizer) -> MethodResult:
        memory = None
        if config.measure.paid:
            x, y = workload.batch(batch_size)
            memory = measure_paid(local, net, x, y, optimizer, workload.device)
            optimizer.zero_grad(set_to_none=True)
        return MethodResult(
            spec.label,
            history,
            memory,
            net,
            method,
            getattr(local, "refreshes", 0),
            workload.tokens(batch_size * workload.world_size),
        )

    return Setup(
        method,
        net,
        net.parameters(),
        None if out is None else checkpoint_path(out, spec, config.loop.seed if per_seed else None),
        config.identity() | {"method": spec.label},
        finish,
        checkpoint_method=method,
        test_set=workload.task.test if config.measure.test else None,
        rank=workload.rank,
        world_size=workload.world_size,
    )


StepHook = Callable[[Any, int, int, float], None]
"""``hook(method, epoch, step, loss)``, called by :func:`train_method` after each optimizer step
with the method being trained (a study reads its state: BP-modified's refresh statistics)."""


EpochHook = Callable[[BlockNet, EpochRecord], None]
"""``hook(net, record)``, called by :func:`train_method` after each epoch (its test evaluation
done) with the model being trained, before anything measures it."""


BeforeTrainHook = Callable[[BlockNet, Any, torch.optim.Optimizer], None]
"""``hook(net, method, optimizer)``, called by :func:`train_method` once the fresh model (its
``init`` loaded), its method and the optimizer are built, before the first step: a study's
change to the starting model (its heads warmed up, or copied from a checkpoint), or a look at
the method.  Not called when the run resumes from a checkpoint, which holds what the hook did."""


def train_method(
    workload: Workload,
    spec: MethodSpec | StudyMethod | str,
    config: RunConfig,
    *,
    out: Path | None,
    per_seed: bool = False,
    on_step: StepHook | None = None,
    on_epoch: EpochHook | None = None,
    before_train: BeforeTrainHook | None = None,
) -> MethodResult:
    """Train a fresh model (seeded by ``config.loop.seed``) with ``spec``: build, method,
    optimizer, train — the one place a run does this (a pipeline stage's method and
    measurement come from :func:`recede.parallel.pipeline.run.stage_setup`, everything else's
    from :func:`plain_setup`).  Checkpoint to ``out/checkpoints/<method>.pt`` (``per_seed``:
    ``out/checkpoints/seed-<seed>/<method>.pt``) every ``config.loop.checkpoint_every`` steps
    (0: only at the end; ``out`` None: never).

    With ``config.loop.resume`` and an existing checkpoint, the run continues from it; the
    checkpoint must come from a run with the same :data:`IDENTITY` options.  A non-finite loss
    stops the run with the step number; the last checkpoint written stays the good one.
    ``on_step``, ``on_epoch``, ``before_train``: a study's :data:`StepHook`, :data:`EpochHook`,
    :data:`BeforeTrainHook`; ``spec`` a
    :class:`StudyMethod`: a study's own method (not under a pipeline).
    """
    spec = parse_method(spec) if isinstance(spec, str) else spec
    lp, opt = config.loop, config.optimizer
    net = workload.build(lp.seed)
    if config.parallel.pipeline > 1:
        from recede.parallel.pipeline.run import stage_setup

        if isinstance(spec, StudyMethod):
            raise ValueError(f"{spec.label}: a study's own method does not run as a pipeline")

        setup = stage_setup(workload, spec, config, net, out)
    else:
        setup = plain_setup(workload, spec, config, net, out, per_seed)
    writes = (workload.rank == 0 or config.parallel.pipeline > 1) and setup.path is not None
    optimizer = make_optimizer(setup.parameters, opt.name, opt.lr, opt.momentum)
    lr_rule = LossIncreaseDecay(optimizer, opt.lr_decay)
    path = setup.path
    loop, has_checkpoint = LoopState(), bool(lp.resume) and path is not None and path.exists()
    if has_checkpoint:
        assert path is not None
        payload = checkpoint.read(path)
        preflight.check_same_run(payload["config"], setup.identity, path)
        loop = checkpoint.restore(
            payload, net=setup.module, optimizer=optimizer, lr_rule=lr_rule, method=setup.checkpoint_method
        )
    elif before_train is not None:
        before_train(net, setup.method, optimizer)
    writer = (
        _tensorboard_writer(out / "tensorboard" / slug(spec))
        if config.output.tensorboard and writes and out is not None
        else None
    )

    def save(finished: bool = False) -> None:
        nonlocal has_checkpoint
        if not writes or path is None:
            return
        checkpoint.save(
            path,
            net=setup.module,
            optimizer=optimizer,
            loop=loop,
            lr_rule=lr_rule,
            method=setup.checkpoint_method,
            config=setup.identity,
            finished=finished,
        )
        has_checkpoint = True

    hook, epoch_hook = on_step, on_epoch

    def step_done(epoch: int, step: int, loss: float) -> None:
        if hook is not None:
            hook(setup.method, epoch, step, loss)
        preflight.commit()  # training has begun: the earlier run --overwrite moved aside goes now
        if writer is not None:
            writer.add_scalar("loss/train_step", loss, loop.global_step)
        if lp.checkpoint_every and loop.global_step % lp.checkpoint_every == 0:
            save()

    def epoch_done(record: EpochRecord) -> None:
        if epoch_hook is not None:
            epoch_hook(net, record)
        if setup.on_epoch is not None:
            setup.on_epoch(record)
        if writer is not None:
            writer.add_scalar("loss/train_epoch", record.train_loss, record.epoch + 1)
            writer.add_scalar("lr", record.lr, record.epoch + 1)
            for name, value in record.test.items():
                writer.add_scalar(f"test/{name}", value, record.epoch + 1)

    try:
        history = train(
            net,
            setup.method,
            workload.task.train,
            optimizer,
            epochs=lp.epochs,
            batch_size=lp.batch_size,
            test_set=setup.test_set,
            seed=lp.seed,
            lr_rule=lr_rule,
            classification=workload.classification,
            device=workload.device,
            state=loop,
            on_step=step_done,
            on_epoch=epoch_done,
            progress=workload.rank == 0 and config.output.progress,
            description=spec.label,
            rank=setup.rank,
            world_size=setup.world_size,
            metrics=workload.task.metrics,
        )
    except NonFiniteLossError as err:
        kept = f"the last good checkpoint is {path}" if has_checkpoint else "no checkpoint was written"
        raise NonFiniteLossError(f"{spec.label}: {err}; {kept}") from None
    finally:
        if writer is not None:
            writer.close()
    save(finished=True)
    return setup.finish(history, optimizer)


@dataclass
class Checked:
    """A run's input, checked and nothing written (:func:`check`): the workload (its model
    built once), the methods, and the timer of a frontier measurement."""

    config: RunConfig
    workload: Workload
    specs: list[MethodSpec]
    timer: Any = None


def check(
    config: RunConfig, default_methods: Callable[[int], list[str]] | None = None, workload: Workload | None = None
) -> Checked:
    """Check everything ``config`` asks for before anything is written: its values, the
    workload (built once), the methods (``config.methods``, else ``default_methods(T)``, else
    BP; a frontier adds BP, every ratio's reference), the clock, TensorBoard, the results
    folder and, to resume, its checkpoints.  A study whose runs share a workload passes it
    (:meth:`Workload.of`).  Raises the one-line ``ValueError`` of a refusal."""
    config.validate()
    if config.output.out is not None:
        preflight.check_folder(Path(config.output.out), config.loop.resume, config.output.overwrite, True)
    workload = workload if workload is not None else Workload.from_config(config)
    names = config.methods or (default_methods(workload.T) if default_methods is not None else ["bp"])
    specs = preflight.methods(names)
    if config.measure.frontier and not any(s.kind == "bp" for s in specs):
        specs.insert(0, parse_method("bp"))  # every ratio is to BP
    workload.check_methods(specs, config)
    timer = None
    if config.measure.frontier:  # a clock unfit for the device fails now
        timer = meter(config.measure.timing_steps, 1, workload.device, config.measure.clock)
    if config.output.tensorboard:
        preflight.require_package("tensorboard", "--tensorboard", "tensorboard")
    if config.output.out is not None and config.loop.resume and config.parallel.pipeline == 1:  # stages: their own
        out, per_seed = Path(config.output.out), config.loop.seeds > 1
        paths = {checkpoint_path(out, s, seed if per_seed else None): s.label for s in specs for seed in config.seeds}
        preflight.check_resume(out, config.identity(), paths, config.loop.resume, net=workload.net)
    return Checked(config, workload, specs, timer)


@dataclass
class RunResult:
    """What :func:`run` produced: the table's rows (a mean over the seeds for several), each
    seed's rows and method results, and the report's path (None when nothing was written)."""

    rows: list[dict[str, Any]]
    runs: list[dict[str, Any]]
    report: Path | None = None


def run(
    config: RunConfig,
    *,
    default_methods: Callable[[int], list[str]] | None = None,
    on_start: Callable[[], None] | None = None,
    checked: Checked | None = None,
    workload: Workload | None = None,
) -> RunResult:
    """Run ``config``: check it (:func:`check`, the workload built once), start the results
    folder (``on_start``; by default :func:`recede.runs.preflight.start_folder` writes the
    config's options to ``config.yaml``), train every method from every seed
    (:func:`train_method`), measure time and memory as paid, and write the results folder
    (:func:`recede.runs.results.write_results`): ``report.md``, ``metrics.json``, ``loss.png``
    (and ``frontier.png`` for a frontier).  Under torchrun each rank trains its shard; rank 0
    writes.  A refusal before training leaves an earlier run's folder as it was.  ``checked``:
    what :func:`check` returned for ``config`` (the command line checks before it launches
    ranks); ``workload``: a study's shared workload (:meth:`Workload.of`)."""
    try:
        return _run(config, default_methods, on_start, checked or check(config, default_methods, workload))
    except (ValueError, FileNotFoundError, KeyboardInterrupt):
        preflight.rollback()
        raise


def _run(
    config: RunConfig,
    default_methods: Callable[[int], list[str]] | None,
    on_start: Callable[[], None] | None,
    checked: Checked,
) -> RunResult:
    workload, specs = checked.workload, checked.specs
    ctx = distributed.init_from_env("gloo", config.parallel.dist_timeout)
    stages = config.parallel.pipeline
    if config.parallel.nproc > 1 and config.parallel.nproc != ctx.world_size:
        raise ValueError(f"--nproc {config.parallel.nproc} but torchrun started {ctx.world_size} processes")
    if stages > 1 and ctx.world_size != stages:
        raise ValueError(f"--pipeline {stages} but torchrun started {ctx.world_size} processes")
    # a pipeline's ranks are its stages, each iterating the whole data set; else data-parallel shards
    workload = dataclasses.replace(workload, rank=ctx.rank, world_size=1 if stages > 1 else ctx.world_size)
    out = None if config.output.out is None else Path(config.output.out)
    if on_start is not None:
        on_start()
    elif out is not None:
        preflight.start_folder(out, config.output.overwrite, "run", config.options())
    runs = []
    for i, seed in enumerate(config.seeds):
        if config.loop.seeds > 1:
            print(f"seed {seed} ({i + 1} of {config.loop.seeds})")
        seeded = config.with_seed(seed)
        results = [train_method(workload, spec, seeded, out=out, per_seed=config.loop.seeds > 1) for spec in specs]
        if config.measure.frontier:
            from recede.runs.compare import measure_frontier

            rows = measure_frontier(workload, specs, results, seeded, checked.timer)
        else:
            rows = [r.row() for r in results]
        runs.append({"seed": seed, "rows": rows, "results": results})
    distributed.shutdown()
    if not ctx.is_main:
        return RunResult([], runs)
    from recede.runs import results as written

    rows, report = written.report_run(config, workload, runs, ctx.world_size, out)
    preflight.commit()
    return RunResult(rows, runs, report)


def _tensorboard_writer(folder: Path):
    preflight.require_package("tensorboard", "--tensorboard", "tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(folder))
