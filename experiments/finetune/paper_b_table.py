"""Paper B's Table 1 in its own regime, at CPU scale: BP-modified local methods fine-tuning a
pretrained network (issue 23 item 2; docs/finetune.md, "Paper B in fine-tuning").

Source: ``recede pretrain --preset resnet|vit`` (distorted digits 0-4).  Target:
``recede.runs.pretrain.TARGET``, 200 distorted images of digits 5-9 (test 174), every head new
(``--init-skip 'heads.*'``).  Columns as in
Paper B: ``full`` (the ResNet, all weights), ``lokr`` (the ResNet, LoKr r = 1, α = 4 on every
block convolution, heads trained) and ``lora`` (the ViT, LoRA r = 1, α = 4 on every qkv).
Rows: FF, LoCo and MPC(h = 5, or T − 1 where T ≤ 5), each plain, BP-modified with Paper B's
scalars (``paper``) and with recede's default rule (``robust``); and BP.  Paper B's settings:
SGD, lr 0.001 (``--lr``), momentum 0.9, 30 epochs, B = 32 here, K = one epoch, B' = 0.64 % of K·B rounded to
micro-batches of b' = 8 (at least two), seeds 0-2; the same initial weights and data order for
every method of a seed.

Parts (``--part``): ``table`` (Table 1), ``sweep`` (Appendix D.2: FF's K × B' grid, full
column), ``cost`` (Tables 4-5: time and real peak memory as paid, per column, relative to FF:
``recede.measure.usage``'s interleaved step timing with refreshes amortised at 1/K, CPU clock, and
``recede.measure.memory``'s real peak of a step and of a refresh).  Writes ``paper_b_<part>.json``,
``.md`` and ``.png`` under ``--out`` after every run (a rerun on the same folder with the same
settings keeps the runs already there).

    PYTHONPATH=src OMP_NUM_THREADS=1 python experiments/finetune/paper_b_table.py --part table --column full
    PYTHONPATH=src OMP_NUM_THREADS=1 python experiments/finetune/paper_b_table.py --smoke
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from recede.bpm.estimator import BPModified, Rule
from recede.cli import build_parser
from recede.cli import main as recede_main
from recede.core.engine import NonFiniteLossError
from recede.methods import default_offset_samples, parse_method
from recede.runs import preflight
from recede.runs.config import (
    BPMConfig,
    LoopConfig,
    MeasureConfig,
    OptimizerConfig,
    OutputConfig,
    RunConfig,
    WorkloadConfig,
)
from recede.runs.plots import figure
from recede.runs.pretrain import PRESETS, TARGET, checkpoint_name, settings
from recede.runs.reports import machine, markdown_table, write_json
from recede.runs.run import StudyMethod, Workload, train_method
from recede.runs.train import make_optimizer

BATCH = 32
MICRO = 8
SHARE = 0.0064  # Paper B §6: B' = 320 of 782 × 64
COLUMNS: dict[str, dict[str, Any]] = {
    "full": {"preset": "resnet", "adapter": None, "locals": ["ff", "loco:3", "mpc:5"]},
    "lokr": {"preset": "resnet", "adapter": "lokr", "locals": ["ff", "loco:3", "mpc:5"]},
    "lora": {"preset": "vit", "adapter": "lora", "locals": ["ff", "loco:4", "mpc:3"]},
}
"""Paper B's three columns at CPU scale.  The ResNet has T = 6 blocks (MPC h = 5), the ViT
T = 4 (MPC h = 3, the largest below T); LoCo: 3 stages of 2 ResNet blocks, 4 stages of one ViT block
(2 stages of 2 would make LoCo, horizon 2 over 2 stages, exact BP)."""
PAPER_B = {  # Paper B Table 1 (CIFAR-100 test accuracy, %): BP; (plain, BP-modified) per local method
    "full": {"BP": 82.90, "FF": (40.10, 68.30), "LoCo": (45.29, 74.61), "MPC": (66.02, 77.24)},
    "lokr": {"BP": 76.47, "FF": (54.43, 65.34), "LoCo": (55.84, 66.15), "MPC": (65.65, 67.77)},
    "lora": {"BP": 91.49, "FF": (63.65, 86.30), "LoCo": (74.31, 90.54), "MPC": (84.03, 90.29)},
}
PAPER_B_SOURCE = "Paper B Table 1 (ResNet-50 full, ResNet-50 LoKr, ViT-B/16 LoRA on CIFAR-100)"


def source_checkpoint(preset: str, cache: str, smoke: bool) -> str:
    """The ``recede pretrain --preset`` file (written, or reused from ``cache``)."""
    argv = ["pretrain", "--preset", preset, "--out", cache, "--no-progress"]
    if smoke:  # one epoch over the undistorted source images, not 30 copies: seconds
        argv += ["--epochs", "1", "--data-opt", "classes=[0, 1, 2, 3, 4]"]
    if recede_main(argv):
        raise SystemExit(f"recede {' '.join(argv)} failed")
    return str(Path(cache) / f"{checkpoint_name(settings(build_parser().parse_args(argv)))}.safetensors")


def model_options(preset: str) -> dict[str, Any]:
    """The registry options of a pretrain preset (``KEY=VALUE`` strings parsed)."""
    from recede.config import key_values

    return key_values(PRESETS[preset]["model_opt"], "--model-opt")


def target_task(train_size: int | None = None):
    """The target task, ``TARGET`` with its first ``train_size`` training images."""
    return preflight.load_data("digits", TARGET | ({"train_size": train_size} if train_size else {}))


def period_of(task, period_epochs: float) -> int:
    steps = -(-len(task.train) // BATCH)
    return max(1, round(period_epochs * steps))


def run_config(
    column: str,
    method: str,
    rule: str | None,
    seed: int,
    *,
    task,
    checkpoint: str,
    lr: float,
    epochs: int,
    period_epochs: float = 1.0,
    offset_samples: int | None = None,
    custom_rule: Rule | None = None,
) -> RunConfig:
    """One run of Table 1: the column's network (its preset's model, the adapter, Paper B's r = 1,
    α = 4, as a model option) started from ``checkpoint`` with fresh heads, ``method`` (BP-modified
    with the named ``rule``, or the function ``custom_rule`` in its place, when ``rule`` is given) on ``task``, SGD
    at ``lr`` with momentum 0.9 and no lr decay, B = 32, K = ``period_epochs`` epochs, B'
    = ``offset_samples`` (default 0.64 % of K·B in micro-batches of 8); nothing written, no
    memory measured."""
    spec = COLUMNS[column]
    options = model_options(spec["preset"])
    if spec["adapter"]:
        options |= {"adapter": spec["adapter"], "adapter_rank": 1, "adapter_alpha": 4.0}
    period = period_of(task, period_epochs)
    samples = offset_samples or default_offset_samples(period, BATCH, MICRO, SHARE)
    return RunConfig(
        workload=WorkloadConfig(
            PRESETS[spec["preset"]]["model"],
            "digits",
            options,
            TARGET | {"train_size": len(task.train)},
            init=checkpoint,
            init_skip=["heads.*"],
        ),
        methods=[method if rule is None else f"bpm-{method}"],
        optimizer=OptimizerConfig("sgd", lr, 0.9, lr_decay=1.0),
        bpm=BPMConfig(period, samples, MICRO, custom_rule or rule or "robust"),
        loop=LoopConfig(epochs=epochs, batch_size=BATCH, seed=seed),
        measure=MeasureConfig(paid=False),
        output=OutputConfig(out=None, progress=False),
    ).validate()


def workload_of(config: RunConfig, task) -> Workload:
    """The workload of ``config`` on ``task`` (loaded once, shared by the runs)."""
    w = config.workload
    return Workload(
        task, w.model, dict(w.model_options), torch.device("cpu"), init=w.init, init_skip=tuple(w.init_skip)
    )


def run_one(
    column: str,
    method: str,
    rule: str | None,
    seed: int,
    *,
    task,
    checkpoint: str,
    lr: float,
    epochs: int,
    period_epochs: float = 1.0,
    offset_samples: int | None = None,
    init_hook: Callable[[torch.nn.Module], None] | None = None,
    before: Callable[[Any, Any, torch.optim.Optimizer], None] | None = None,
    method_factory: Callable[..., Any] | None = None,
    custom_rule: Rule | None = None,
) -> dict[str, Any]:
    """Fine-tune one network (:func:`run_config`, by :func:`recede.runs.run.train_method`); its
    test accuracy per epoch, refresh statistics and wall time.

    ``init_hook(net)`` and then ``before(net, method, optimizer)`` run on the fresh network (its
    checkpoint loaded, the adapter in place) before the first step (``before``: e.g. a head
    warm-up); ``method_factory(net, method, rule, task, seed, period_epochs,
    offset_samples, custom_rule)`` builds the method in place of the named one; ``custom_rule`` replaces the
    named a/λ rule of a BP-modified method (the record keeps ``rule``'s name)."""
    config = run_config(
        column,
        method,
        rule,
        seed,
        task=task,
        checkpoint=checkpoint,
        lr=lr,
        epochs=epochs,
        period_epochs=period_epochs,
        offset_samples=offset_samples,
        custom_rule=custom_rule,
    )
    spec: str | StudyMethod = (config.methods or [method])[0]
    if method_factory is not None:
        factory = method_factory
        spec = StudyMethod(
            label(method, rule),
            lambda net: factory(net, method, rule, task, seed, period_epochs, offset_samples, custom_rule),
        )
    engines: list[Any] = []
    refreshes: list[dict[str, Any]] = []
    seen = [0]

    def start(net, engine, optimizer: torch.optim.Optimizer) -> None:
        engines.append(engine)
        if init_hook is not None:
            init_hook(net)
        if before is not None:
            before(net, engine, optimizer)

    def on_step(engine, epoch: int, step: int, loss: float) -> None:
        if isinstance(engine, BPModified) and engine.refreshes != seen[0] and engine.last_stats is not None:
            seen[0] = engine.refreshes
            refreshes.append(engine.last_stats.as_dict())

    started = time.perf_counter()
    try:
        history = train_method(
            workload_of(config, task), spec, config, out=None, on_step=on_step, before_train=start
        ).history
        accs = [r.test["accuracy"] for r in history]
    except NonFiniteLossError:
        accs = [float("nan")] * epochs
    engine = engines[0]
    return {
        "column": column,
        "method": method,
        "rule": rule,
        "seed": seed,
        "lr": lr,
        "epochs": epochs,
        "period_epochs": period_epochs,
        "offset_samples": getattr(engine, "offset_samples", None),
        "period": getattr(engine, "period", None),
        "acc": accs[-1],
        "curve": accs,
        "seconds": time.perf_counter() - started,
        "refreshes": refreshes,
    }


def label(method: str, rule: str | None) -> str:
    base = parse_method(method).label
    return base if rule is None else f"{base}+BPM({rule})"


def mean_sd(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v == v]
    if not values:
        return float("nan"), float("nan")
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def pm(values: list[float]) -> str:
    m, s = mean_sd(values)
    return f"{m:.3f} ± {s:.3f}"


class Store:
    """Runs kept in a JSON file, keyed, so a rerun with the same settings skips them."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path, self.meta = path, meta
        old = json.loads(path.read_text()) if path.is_file() else {}
        self.runs: dict[str, Any] = old.get("runs", {}) if old.get("meta") == meta else {}

    def get(self, key: str, make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        if key not in self.runs:
            self.runs[key] = make()
            write_json(self.path, {"meta": self.meta, "machine": machine("cpu"), "runs": self.runs})
            r = self.runs[key]
            print(f"{key}: acc {r.get('acc', float('nan')):.3f} ({r.get('seconds', 0):.1f} s)", flush=True)
        return self.runs[key]


def paired(values: list[float], reference: list[float]) -> str:
    """Mean ± standard error of the per-seed differences ``values − reference``."""
    diffs = [v - r for v, r in zip(values, reference)]
    se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else 0.0
    return f"{statistics.mean(diffs):+.3f} ± {se:.3f}"


def gap_recovered(plain: float, modified: float, bp: float) -> float:
    """Share of the local method's gap to BP that BP-modification closes (nan without a gap)."""
    return (modified - plain) / (bp - plain) if bp - plain > 1e-9 else float("nan")


def part_table(args, out: Path) -> None:
    columns = args.column or list(COLUMNS)
    meta = {"part": "table", "lr": args.lr, "epochs": args.epochs, "seeds": args.seeds, "train_size": args.train_size}
    store = Store(out / f"paper_b_table_lr{args.lr:g}.json", meta)
    task = target_task(args.train_size)
    rows = []
    for column in columns:
        spec = COLUMNS[column]
        ckpt = source_checkpoint(spec["preset"], args.cache, args.smoke)
        locals_ = (
            spec["locals"][:1]
            if args.smoke
            else [m for m in spec["locals"] if not args.local or m.split(":")[0] in args.local]
        )
        rules = [None, "paper", "robust"]
        results: dict[tuple[str, str | None], list[float]] = {}
        for method, rule in [("bp", None)] + [(m, s) for m in locals_ for s in rules]:
            accs = []
            if args.only_existing and f"{column}/{label(method, rule)}/seed0" not in store.runs:
                continue
            for seed in range(args.seeds):
                key = f"{column}/{label(method, rule)}/seed{seed}"
                r = store.get(
                    key,
                    partial(
                        run_one,
                        column,
                        method,
                        rule,
                        seed,
                        task=task,
                        checkpoint=ckpt,
                        lr=args.lr,
                        epochs=args.epochs,
                    ),
                )
                accs.append(r["acc"])
            results[(method, rule)] = accs
        if ("bp", None) not in results:
            continue
        bp = mean_sd(results[("bp", None)])[0]
        for (method, rule), accs in results.items():
            row = {"column": column, "method": label(method, rule), "test acc": pm(accs)}
            paper = PAPER_B[column]
            kind = {"ff": "FF", "loco": "LoCo", "mpc": "MPC"}.get(parse_method(method).kind)
            if rule is not None and (method, None) in results:
                plain = mean_sd(results[(method, None)])[0]
                row["gap recovered"] = f"{100 * gap_recovered(plain, mean_sd(accs)[0], bp):.0f} %"
                row["− plain (paired)"] = paired(accs, results[(method, None)])
            if kind is None:
                row["Paper B (%)"] = f"{paper['BP']:.2f}"
            elif rule != "robust":
                pb = paper[kind]
                row["Paper B (%)"] = f"{pb[rule == 'paper']:.2f}" + (
                    f" ({100 * gap_recovered(pb[0], pb[1], paper['BP']):.0f} %)" if rule else ""
                )
            rows.append(row)
    text = (
        f"Paper B Table 1 at CPU scale, lr {args.lr:g}, {args.epochs} epochs, seeds 0-{args.seeds - 1}, "
        f"target {len(task.train)} distorted training images of digits 5-9, source distorted digits 0-4; "
        f"{PAPER_B_SOURCE} beside\n\n"
        + markdown_table(rows, ["column", "method", "test acc", "gap recovered", "− plain (paired)", "Paper B (%)"])
    )
    (out / f"paper_b_table_lr{args.lr:g}.md").write_text(text + "\n")
    print(text)
    with figure(out / f"paper_b_table_lr{args.lr:g}.png", 1, len(columns), figsize=(5 * len(columns), 4)) as (
        fig,
        axes,
    ):
        axes = axes if len(columns) > 1 else [axes]
        for ax, column in zip(axes, columns):
            mine = [r for r in rows if r["column"] == column]
            means = [float(r["test acc"].split(" ± ")[0]) for r in mine]
            sds = [float(r["test acc"].split(" ± ")[1]) for r in mine]
            ax.barh(
                range(len(mine)),
                means,
                xerr=sds,
                color=[
                    "k"
                    if "BP" == r["method"]
                    else "C1"
                    if "paper" in r["method"]
                    else "C2"
                    if "robust" in r["method"]
                    else "C0"
                    for r in mine
                ],
            )
            ax.set_yticks(range(len(mine)), [r["method"] for r in mine], fontsize=7)
            ax.set_xlabel("test accuracy (digits 5-9)")
            ax.set_title(f"{column}, lr {args.lr:g}")
            ax.invert_yaxis()


def part_sweep(args, out: Path) -> None:
    """Appendix D.2: FF+BPM over K and B' on the full column (``--sweep-rule``): Paper B's
    scalars on K ∈ {0.5, 1, 2} epochs × B' ∈ {16, 64}, the robust rule on K = 1 × B' ∈ {16, 64, 160}."""
    column = (args.column or ["full"])[0]
    periods = [1.0] if args.smoke else [0.5, 1.0, 2.0]
    samples = [16] if args.smoke else [16, 64]
    meta = {
        "part": "sweep",
        "column": column,
        "lr": args.lr,
        "epochs": args.epochs,
        "seeds": args.seeds,
        "train_size": args.train_size,
    }
    store = Store(out / f"paper_b_sweep_{column}_lr{args.lr:g}.json", meta)
    table = out / f"paper_b_table_lr{args.lr:g}.json"
    if table.is_file():  # BP and FF are Table 1's runs where its settings are these
        saved = json.loads(table.read_text())
        if {k: saved["meta"].get(k) for k in ("lr", "epochs", "seeds", "train_size")} == {
            k: meta[k] for k in ("lr", "epochs", "seeds", "train_size")
        }:
            for s in range(args.seeds):
                for m, name in (("bp", "BP"), ("ff", "FF"), ("paper", "FF+BPM(paper)"), ("robust", "FF+BPM(robust)")):
                    run = saved["runs"].get(f"{column}/{name}/seed{s}")
                    if run is None:
                        continue
                    key = f"{m}/seed{s}" if m in ("bp", "ff") else f"{m}/K1/B{run['offset_samples']}/seed{s}"
                    store.runs.setdefault(key, run)
    task = target_task(args.train_size)
    ckpt = source_checkpoint(COLUMNS[column]["preset"], args.cache, args.smoke)
    base = {
        m: [
            store.get(
                f"{m}/seed{s}",
                partial(run_one, column, m, None, s, task=task, checkpoint=ckpt, lr=args.lr, epochs=args.epochs),
            )["acc"]
            for s in range(args.seeds)
        ]
        for m in ("bp", "ff")
    }
    rows = [
        {"K (epochs)": "-", "B'": "-", "method": "BP", "test acc": pm(base["bp"])},
        {"K (epochs)": "-", "B'": "-", "method": "FF", "test acc": pm(base["ff"])},
    ]
    ff_mean, bp_mean = mean_sd(base["ff"])[0], mean_sd(base["bp"])[0]
    rules = args.sweep_rule or ["paper", "robust"]
    grid: dict[str, dict[tuple[float, int], float]] = {s: {} for s in rules}
    for rule in rules:  # robust: only K = 1 epoch, over B' (its held-out test needs micro-batches)
        configs = (
            [(k, b) for k in periods for b in samples]
            if rule == "paper"
            else [(1.0, b) for b in ([16] if args.smoke else [16, 64, 160])]
        )
        for k, b in configs:
            accs = [
                store.get(
                    f"{rule}/K{k:g}/B{b}/seed{s}",
                    partial(
                        run_one,
                        column,
                        "ff",
                        rule,
                        s,
                        task=task,
                        checkpoint=ckpt,
                        lr=args.lr,
                        epochs=args.epochs,
                        period_epochs=k,
                        offset_samples=b,
                    ),
                )["acc"]
                for s in range(args.seeds)
            ]
            grid[rule][(k, b)] = mean_sd(accs)[0]
            rows.append(
                {
                    "K (epochs)": f"{k:g}",
                    "B'": b,
                    "method": f"FF+BPM({rule})",
                    "test acc": pm(accs),
                    "gap recovered": f"{100 * gap_recovered(ff_mean, mean_sd(accs)[0], bp_mean):.0f} %",
                }
            )
    text = (
        f"Appendix D.2 sweep, {column} column, lr {args.lr:g}, {args.epochs} epochs, {args.seeds} seeds\n\n"
        + markdown_table(rows, ["method", "K (epochs)", "B'", "test acc", "gap recovered"])
    )
    (out / f"paper_b_sweep_{column}_lr{args.lr:g}.md").write_text(text + "\n")
    print(text)
    with figure(
        out / f"paper_b_sweep_{column}_lr{args.lr:g}.png",
        1,
        len(rules),
        figsize=(5 * len(rules), 4),
        squeeze=False,
    ) as (fig, axes):
        for ax, rule in zip(axes[0], rules):
            for k in sorted({k for k, _ in grid[rule]}):
                bs = sorted(b for kk, b in grid[rule] if kk == k)
                ax.plot(bs, [grid[rule][(k, b)] for b in bs], marker="o", label=f"K = {k:g} epoch")
            ax.axhline(mean_sd(base["bp"])[0], color="k", ls="--", label="BP")
            ax.axhline(mean_sd(base["ff"])[0], color="C7", ls=":", label="FF")
            ax.set_xscale("log", base=2)
            ax.set_xlabel("B' (samples per refresh)")
            ax.set_ylabel("test accuracy")
            ax.set_title(f"FF+BPM({rule})")
            ax.legend(fontsize=7)


def part_cost(args, out: Path) -> None:
    """Tables 4-5: time per step as paid (refreshes amortised at 1/K) and real peak memory, / FF."""
    from recede.measure.usage import measure_paid, meter, refreshes_per_step, time_methods

    columns = args.column or list(COLUMNS)
    task = target_task(args.train_size)
    rows = []
    for column in columns:
        ckpt = source_checkpoint(COLUMNS[column]["preset"], args.cache, args.smoke)
        names = [("bp", None)] + [(m, s) for m in COLUMNS[column]["locals"] for s in (None, "paper")]
        configs = [run_config(column, m, s, 0, task=task, checkpoint=ckpt, lr=args.lr, epochs=1) for m, s in names]
        workload = workload_of(configs[0], task)
        net = workload.build(0)  # every method measured on one network: Table 1's, seed 0
        methods = [workload.method(net, parse_method((c.methods or ["bp"])[0]), c) for c in configs]
        x, y = next(iter(torch.utils.data.DataLoader(task.train, batch_size=BATCH)))
        timer = meter(3 if args.smoke else 15, 2, torch.device("cpu"), "cpu")
        times, _ = time_methods(
            methods, [net] * len(methods), x, y, [refreshes_per_step(m) for m in methods], timer, net
        )
        optimizer = make_optimizer([p for p in net.parameters() if p.requires_grad], "sgd", args.lr, 0.9)
        methods[0].backward(x, y)
        optimizer.step()
        memories = [measure_paid(m, net, x, y, optimizer, "cpu") for m in methods]
        ff = names.index(("ff", None))
        for (m, s), t, mem in zip(names, times, memories):
            rows.append(
                {
                    "column": column,
                    "method": label(m, "" if s else None).replace("+BPM()", "+BPM"),
                    "ms/step (paid)": 1000 * t.seconds,
                    "time / FF": t.seconds / times[ff].seconds,
                    "real peak MiB": (mem.real_peak_bytes or 0) / 2**20,
                    "memory / FF": (mem.real_peak_bytes or 0) / (memories[ff].real_peak_bytes or 1),
                    "refresh ms": None if t.refresh is None else 1000 * t.refresh,
                    "refreshes/step": t.refreshes_per_step,
                }
            )
    write_json(out / "paper_b_cost.json", {"rows": rows, "machine": machine("cpu"), "batch": BATCH})
    cols = [
        "column",
        "method",
        "ms/step (paid)",
        "time / FF",
        "real peak MiB",
        "memory / FF",
        "refresh ms",
        "refreshes/step",
    ]
    text = "Tables 4-5 at CPU scale (CPU clock; refreshes amortised at 1/K)\n\n" + markdown_table(rows, cols)
    (out / "paper_b_cost.md").write_text(text + "\n")
    print(text)
    with figure(out / "paper_b_cost.png", 1, 2, figsize=(10, 4)) as (fig, axes):
        for ax, key in zip(axes, ("time / FF", "memory / FF")):
            ax.barh(range(len(rows)), [r[key] for r in rows])
            ax.set_yticks(range(len(rows)), [f"{r['column']}: {r['method']}" for r in rows], fontsize=6)
            ax.axvline(1.0, color="k", lw=0.5)
            ax.set_xlabel(key)
            ax.invert_yaxis()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="one seed, one epoch, FF only, on 64 images: seconds")
    p.add_argument("--part", choices=["table", "sweep", "cost", "all"], default="all")
    p.add_argument("--column", action="append", choices=list(COLUMNS), help="repeatable; default all")
    p.add_argument(
        "--local",
        action="append",
        choices=["ff", "loco", "mpc"],
        help="Table 1's local methods to run (repeatable; default all three)",
    )
    p.add_argument(
        "--only-existing", action="store_true", help="table: report the rows already in the results file, train nothing"
    )
    p.add_argument("--lr", type=float, default=0.001)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument(
        "--sweep-rule",
        action="append",
        choices=["paper", "robust"],
        help="rules of the K × B' sweep (repeatable; default both)",
    )
    p.add_argument(
        "--train-size", type=int, default=None, help=f"first N target training images (default {TARGET['train_size']})"
    )
    p.add_argument("--cache", default="results/pretrained")
    p.add_argument("--out", default="results/finetune-paper-b")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    torch.set_num_threads(1)
    if args.smoke:
        args.seeds, args.epochs, args.train_size = 1, 1, 64
        args.column = args.column or ["full"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for part, fn in (("table", part_table), ("sweep", part_sweep), ("cost", part_cost)):
        if args.part in (part, "all"):
            fn(args, out)


if __name__ == "__main__":
    main()
