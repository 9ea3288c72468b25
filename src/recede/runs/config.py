"""What a run is asked to do, as typed values: :class:`RunConfig` and its parts.

The command line (``recede train``, ``compare``, ``demo``, ``bench``, the pipeline), a YAML file
(:meth:`RunConfig.from_dict` on its mapping) and Python (``recede.RunConfig(...)``) all build a
:class:`RunConfig`; :func:`recede.runs.run.run` runs it.  :meth:`RunConfig.validate` checks
every value once, against the ranges of :data:`recede.config.BOUNDS` and the choices below; a
bad value is one ``ValueError`` naming the field (``loop.epochs must be ...``), the line the
command line prints with exit status 2.

The parts:

* :class:`WorkloadConfig` — the model and data by registry name, their options, and the state
  dict every fresh model starts from (``init``, ``init_skip``);
* :class:`OptimizerConfig` — ``sgd`` or ``adam``, lr, momentum, Paper A's lr decay;
* :class:`BPMConfig` — the refresh settings of BP-modified (``bpm-``) methods;
* :class:`LoopConfig` — epochs, batch size, seeds, device, threads, checkpoints, resume;
* :class:`MeasureConfig` — what is measured after training (the paid memory always; with
  ``frontier`` also timed steps, the cost model's ratio and cos θ to BP);
* :class:`OutputConfig` — the results folder and the terminal;
* :class:`ParallelConfig` — data-parallel ranks or pipeline stages.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from recede.bpm.estimator import Rule
from recede.bpm.scalars import RULES
from recede.config import BOUNDS, MAX_INT, key_values
from recede.keywords import shown
from recede.measure.usage import CLOCKS

OPTIMIZERS = ("sgd", "adam")
_NULLABLE = ("resume",)


@dataclass
class WorkloadConfig:
    """The model and data by registry name (:func:`recede.models.available`,
    :func:`recede.data.available`) with their keyword options; ``init``: a state dict file
    every fresh model starts from, except the keys matching a glob of ``init_skip``."""

    model: str = "resmlp"
    data: str = "trig"
    model_options: dict[str, Any] = field(default_factory=dict)
    data_options: dict[str, Any] = field(default_factory=dict)
    init: str | None = None
    init_skip: list[str] = field(default_factory=list)


@dataclass
class OptimizerConfig:
    """``name``: sgd or adam; ``lr_decay``: Paper A's rule, lr × this whenever the epoch loss
    rises (1 disables)."""

    name: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.0
    lr_decay: float = 0.9


@dataclass
class BPMConfig:
    """The refresh of BP-modified methods (Paper B Algorithm 1): ``period`` K steps between
    refreshes (None: one epoch), ``samples`` B' per refresh (None: 1 % of K·B), in
    micro-batches of ``micro_batch``; ``rule`` robust, paper, bias or fixed (``a``, ``lam``),
    or from Python a :data:`~recede.bpm.estimator.Rule` function (a study's ablated rule;
    written under its function name)."""

    period: int | None = None
    samples: int | None = None
    micro_batch: int = 8
    rule: str | Rule = "robust"
    a: float | None = None
    lam: float | None = None


@dataclass
class LoopConfig:
    """The training loop: ``seeds`` runs from ``seed`` on (``seed`` … ``seed + seeds − 1``);
    ``threads`` torch CPU threads (0: torch's default); a checkpoint every
    ``checkpoint_every`` steps (0: only at the end); ``resume``: False, True (a checkpoint must
    exist) or ``"auto"``."""

    epochs: int = 5
    batch_size: int = 100
    seed: int = 0
    seeds: int = 1
    device: str = "cpu"
    threads: int = 0
    checkpoint_every: int = 0
    resume: bool | str = False


@dataclass
class MeasureConfig:
    """After training every run measures the memory a step costs as paid
    (:func:`recede.measure.usage.measure_paid`; ``paid`` False: not measured, for a study that
    records only its runs' quality); ``test`` False: no test evaluation after each epoch (a study
    that scores its runs itself, the model left in training mode between epochs).  ``frontier`` adds the comparison of
    ``recede compare``: ``timing_steps`` timed steps per method on ``clock``, the cost model's
    ratio and cos θ to BP's gradient over ``cosine_batches`` batches, ratios to BP."""

    frontier: bool = False
    timing_steps: int = 10
    clock: str = "wall"
    cosine_batches: int = 4
    paid: bool = True
    test: bool = True


@dataclass
class OutputConfig:
    """The results folder (None: write nothing), whether an earlier run in it may be
    replaced, progress bars, and TensorBoard logs."""

    out: str | None = "results/run"
    overwrite: bool = False
    progress: bool = True
    tensorboard: bool = False


@dataclass
class ParallelConfig:
    """``nproc`` data-parallel ranks, or a ``pipeline`` of that many stages fed
    ``micro_batches`` micro-batches per step (None: 4 · pipeline)."""

    nproc: int = 1
    pipeline: int = 1
    micro_batches: int | None = None
    dist_timeout: float = 300.0


@dataclass
class RunConfig:
    """One run: every method of ``methods`` trained on the workload for each seed, measured,
    and written to the output folder (:func:`recede.runs.run.run`)."""

    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    methods: list[str] | None = field(default_factory=lambda: ["bp"])  # None: the front-end's default set
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    bpm: BPMConfig = field(default_factory=BPMConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)

    @property
    def seeds(self) -> list[int]:
        """The seeds the run trains from: ``loop.seed`` … ``loop.seed + loop.seeds − 1``."""
        return list(range(self.loop.seed, self.loop.seed + self.loop.seeds))

    def with_seed(self, seed: int) -> RunConfig:
        """This run from one seed only."""
        return dataclasses.replace(self, loop=dataclasses.replace(self.loop, seed=seed, seeds=1))

    def identity(self, seed: int | None = None) -> dict[str, Any]:
        """The options that define what the run computes, under the command line's names: a
        checkpoint resumes only a run that agrees on them (:data:`recede.runs.run.IDENTITY`)."""
        w, o, b = self.workload, self.optimizer, self.bpm
        return {
            "model": w.model,
            "data": w.data,
            "model_opt": dict(w.model_options),
            "data_opt": dict(w.data_options),
            "batch_size": self.loop.batch_size,
            "optimizer": o.name,
            "lr": o.lr,
            "momentum": o.momentum,
            "lr_decay": o.lr_decay,
            "seed": self.loop.seed if seed is None else seed,
            "bpm_period": b.period,
            "bpm_samples": b.samples,
            "bpm_micro_batch": b.micro_batch,
            "bpm_rule": _rule_name(b.rule),
            "bpm_a": b.a,
            "bpm_lam": b.lam,
            "init": w.init,
            "init_skip": list(w.init_skip) or None,
        }

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> RunConfig:
        """A config from the flat option names of the command line and its YAML files
        (``model``, ``model_opt`` as ``KEY=VALUE`` strings, ``batch_size``, ``bpm_period``,
        ``no_progress``, ...; :meth:`options` writes them); a name left out keeps its default.
        ``method`` (train) or ``methods`` (compare) name the methods; neither (or None): the
        front-end's default set.  The result is validated."""
        o, d = options, cls()

        def get(name: str, default: Any) -> Any:
            value = o.get(name, default)
            return default if value is None and default is not None and name not in _NULLABLE else value

        methods = o.get("method") or o.get("methods") or None
        return cls(
            workload=WorkloadConfig(
                model=get("model", d.workload.model),
                data=get("data", d.workload.data),
                model_options=key_values(o.get("model_opt") or [], "--model-opt"),
                data_options=key_values(o.get("data_opt") or [], "--data-opt"),
                init=o.get("init"),
                init_skip=list(o.get("init_skip") or []),
            ),
            methods=list(methods) if methods is not None else None,
            optimizer=OptimizerConfig(
                get("optimizer", "sgd"), get("lr", 0.01), get("momentum", 0.0), get("lr_decay", 0.9)
            ),
            bpm=BPMConfig(
                o.get("bpm_period"),
                o.get("bpm_samples"),
                get("bpm_micro_batch", 8),
                get("bpm_rule", "robust"),
                o.get("bpm_a"),
                o.get("bpm_lam"),
            ),
            loop=LoopConfig(
                get("epochs", 5),
                get("batch_size", 100),
                get("seed", 0),
                get("seeds", 1),
                get("device", "cpu"),
                get("threads", 0),
                get("checkpoint_every", 0),
                get("resume", False),
            ),
            measure=MeasureConfig(
                bool(o.get("frontier", False)), get("timing_steps", 10), get("clock", "wall"), get("cosine_batches", 4)
            ),
            output=OutputConfig(
                o.get("out", d.output.out),
                bool(o.get("overwrite", False)),
                not o.get("no_progress", False),
                bool(o.get("tensorboard", False)),
            ),
            parallel=ParallelConfig(
                get("nproc", 1), get("pipeline", 1), o.get("micro_batches"), get("dist_timeout", 300.0)
            ),
        ).validate()

    def options(self) -> dict[str, Any]:
        """The config under the flat option names :meth:`from_options` reads (what a Python
        run writes to ``config.yaml``)."""
        w, o, b, lp, m = self.workload, self.optimizer, self.bpm, self.loop, self.measure
        return {
            "model": w.model,
            "data": w.data,
            "model_opt": [f"{k}={json.dumps(v)}" for k, v in w.model_options.items()],
            "data_opt": [f"{k}={json.dumps(v)}" for k, v in w.data_options.items()],
            "init": w.init,
            "init_skip": list(w.init_skip) or None,
            "methods": self.methods,
            "optimizer": o.name,
            "lr": o.lr,
            "momentum": o.momentum,
            "lr_decay": o.lr_decay,
            "bpm_period": b.period,
            "bpm_samples": b.samples,
            "bpm_micro_batch": b.micro_batch,
            "bpm_rule": _rule_name(b.rule),
            "bpm_a": b.a,
            "bpm_lam": b.lam,
            "epochs": lp.epochs,
            "batch_size": lp.batch_size,
            "seed": lp.seed,
            "seeds": lp.seeds,
            "device": lp.device,
            "threads": lp.threads,
            "checkpoint_every": lp.checkpoint_every,
            "frontier": m.frontier,
            "timing_steps": m.timing_steps,
            "clock": m.clock,
            "cosine_batches": m.cosine_batches,
            "out": self.output.out,
            "no_progress": not self.output.progress,
            "tensorboard": self.output.tensorboard,
            "nproc": self.parallel.nproc,
            "pipeline": self.parallel.pipeline,
            "micro_batches": self.parallel.micro_batches,
            "dist_timeout": self.parallel.dist_timeout,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        """A config from a plain mapping (a YAML file's, or :meth:`as_dict`'s): one key per
        part, each a mapping of that part's fields; a part left out keeps its defaults.  An
        unknown key is a ``ValueError`` naming it.  The result is validated."""
        if not isinstance(values, dict):
            raise ValueError(f"a run config must be a mapping of its parts, got {shown(values)}")
        parts = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(map(str, values)) - set(parts))
        if unknown:
            raise ValueError(f"run config: unknown key(s) {', '.join(unknown)}; it takes: {', '.join(parts)}")
        kwargs: dict[str, Any] = {}
        for name, value in values.items():
            default: Any = getattr(cls(), name)
            if dataclasses.is_dataclass(default):
                if not isinstance(value, dict):
                    raise ValueError(f"run config: {name} must be a mapping, got {shown(value)}")
                fields = {f.name for f in dataclasses.fields(default)}
                bad = sorted(set(map(str, value)) - fields)
                if bad:
                    raise ValueError(
                        f"run config: {name} has no field(s) {', '.join(bad)}; it takes: {', '.join(sorted(fields))}"
                    )
                kwargs[name] = dataclasses.replace(default, **value)  # type: ignore[type-var]  # a part, checked above
            else:
                kwargs[name] = value
        return cls(**kwargs).validate()

    def as_dict(self) -> dict[str, Any]:
        """The config as plain values (what :meth:`from_dict` reads back)."""
        return dataclasses.asdict(self)

    def validate(self) -> RunConfig:
        """Check every field once; raise ``ValueError`` naming the first bad one.  Returns self."""
        w, o, b, lp, m, out, par = (
            self.workload,
            self.optimizer,
            self.bpm,
            self.loop,
            self.measure,
            self.output,
            self.parallel,
        )
        for where, value in (("workload.model", w.model), ("workload.data", w.data), ("loop.device", lp.device)):
            _string(where, value)
        if w.init is not None:
            _string("workload.init", w.init)
        for where, options in (("workload.model_options", w.model_options), ("workload.data_options", w.data_options)):
            if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
                raise ValueError(f"{where} must be a mapping of option names to values, got {shown(options)}")
        if not isinstance(w.init_skip, (list, tuple)) or not all(isinstance(s, str) for s in w.init_skip):
            raise ValueError(f"workload.init_skip must be a list of glob patterns, got {shown(w.init_skip)}")
        if self.methods is not None and (
            not isinstance(self.methods, (list, tuple))
            or not self.methods
            or not all(isinstance(s, str) for s in self.methods)
        ):
            raise ValueError(f"methods must be a non-empty list of method names, got {shown(self.methods)}")
        _choice("optimizer.name", o.name, OPTIMIZERS)
        _number("optimizer.lr", o.lr, *BOUNDS["lr"])
        _number("optimizer.momentum", o.momentum, 0.0, 1.0, high_open=True)
        _number("optimizer.lr_decay", o.lr_decay, 0.0, 1.0, low_open=True)
        _integer("bpm.period", b.period, *BOUNDS["bpm_period"], optional=True)
        _integer("bpm.samples", b.samples, *BOUNDS["bpm_samples"], optional=True)
        _integer("bpm.micro_batch", b.micro_batch, *BOUNDS["bpm_micro_batch"])
        if not callable(b.rule):
            _choice("bpm.rule", b.rule, RULES)
        _number("bpm.a", b.a, *BOUNDS["bpm_a"], optional=True)
        _number("bpm.lam", b.lam, 0.0, 1.0, optional=True)
        for name in ("epochs", "batch_size", "seed", "seeds", "threads", "checkpoint_every"):
            _integer(f"loop.{name}", getattr(lp, name), *BOUNDS[name])
        if lp.resume not in (False, True, "auto"):
            raise ValueError(f"loop.resume must be false, true or 'auto', got {shown(lp.resume)}")
        for name in ("frontier", "paid", "test"):
            if not isinstance(getattr(m, name), bool):
                raise ValueError(f"measure.{name} must be true or false, got {shown(getattr(m, name))}")
        _integer("measure.timing_steps", m.timing_steps, *BOUNDS["timing_steps"])
        _integer("measure.cosine_batches", m.cosine_batches, *BOUNDS["cosine_batches"])
        _choice("measure.clock", m.clock, tuple(CLOCKS))
        if out.out is not None:
            _string("output.out", out.out)
            if not out.out.strip():
                raise ValueError("output.out is empty; name a results folder")
        for name in ("overwrite", "progress", "tensorboard"):
            if not isinstance(getattr(out, name), bool):
                raise ValueError(f"output.{name} must be true or false, got {shown(getattr(out, name))}")
        if lp.resume and out.overwrite:
            raise ValueError("loop.resume and output.overwrite contradict each other")
        _integer("parallel.nproc", par.nproc, *BOUNDS["nproc"])
        _integer("parallel.pipeline", par.pipeline, *BOUNDS["pipeline"])
        _integer("parallel.micro_batches", par.micro_batches, *BOUNDS["micro_batches"], optional=True)
        _number("parallel.dist_timeout", par.dist_timeout, 0.0, math.inf, low_open=True, high_open=True)
        return self


def _rule_name(rule: str | Rule) -> str:
    """A BP-modified rule's name: the rule's, or a Rule function's."""
    return rule if isinstance(rule, str) else getattr(rule, "__qualname__", repr(rule))


def _string(where: str, value: Any) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a string, got {shown(value)}")


def _choice(where: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{where} must be one of {', '.join(choices)}, got {shown(value)}")


def _integer(where: str, value: Any, low: float, high: float = MAX_INT, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{where} must be an integer in [{int(low)}, {int(high)}], got {shown(value)}")


def _number(
    where: str,
    value: Any,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
) -> None:
    if value is None and optional:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{where} must be a number in {interval}, got {shown(value)}")
