"""``recede reproduce bpm-robustness``: does BP-modified FF ever do worse than plain FF?

For every task × learning rate × seed of ``experiments/bpm_robustness/cpu.yaml`` it trains BP,
FF and BP-modified FF with each configured rule (:mod:`recede.bpm.scalars`: ``paper`` is
Paper B's estimator as printed with SPEC §5's corrections, ``robust`` recede's default), all
from the same initial weights and data order, in Paper B's regime (K = one epoch, B' ≈ 0.64 %
of K·B, b' = 8; at least two micro-batches).  One more regime, labelled as such, repeats the
BP-modified runs of one task with fresher offsets.  BP-modified runs keep every refresh's
:class:`~recede.bpm.estimator.RefreshStats` (a, λ, the error terms, in-sample and held-out
cosines), from which the report diagnoses why a rule loses.

Writes ``bpm_robustness.json`` after every run, and a study started again on the same folder
with the same configuration (``diagnosis`` aside) keeps the runs already there (delete a run's
entry to redo it; from the CLI, ``--overwrite`` reuses the folder: it replaces ``report.md``
and ``config.yaml``, not the runs);
then ``results.png``, ``diagnosis.png`` and ``report.md`` under ``out``.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from recede import data
from recede.bpm.estimator import BPModified, Rule
from recede.core.engine import NonFiniteLossError
from recede.methods import default_offset_samples, parse_method
from recede.reproduce import torch_threads
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
from recede.runs.reports import machine, markdown_table, write_json
from recede.runs.run import Workload, train_method

CONFIGS = Path(__file__).resolve().parents[3] / "experiments" / "bpm_robustness"


def load_config(full: bool = False) -> dict:
    if full:
        raise ValueError(
            "bpm-robustness has no --full configuration: it is a CPU-scale study (experiments/bpm_robustness/cpu.yaml)"
        )
    return yaml.safe_load((CONFIGS / "cpu.yaml").read_text())


def label(rule: str | None, fresh: bool = False) -> str:
    """``FF``, ``FF+BPM(paper)``, ``FF+BPM(robust), fresh`` ..."""
    return "FF" if rule is None else f"FF+BPM({rule})" + (", fresh" if fresh else "")


def run_config(
    spec: dict, task: data.Task, method: str, lr: float, seed: int, regime: dict, rule: str | Rule | None = None
) -> RunConfig:
    """The run of one model: ``method`` on the task of ``spec`` at ``lr`` from ``seed``, in
    ``regime`` (K = ``period_epochs`` epochs, B' = ``offset_samples`` or ``offset_share`` of K·B);
    ``rule``: BP-modified's rule (a name, or a :data:`~recede.bpm.estimator.Rule` function;
    None: the robust default).  No lr decay, no results folder, no memory measurement."""
    B = spec["batch_size"]
    steps = math.ceil(len(task.train) / B)  # type: ignore[arg-type]  # torch's Dataset type has no __len__; ours all do
    period = max(1, round(regime["period_epochs"] * steps))
    samples = regime.get("offset_samples") or default_offset_samples(
        period, B, regime["micro_batch"], regime["offset_share"]
    )
    opt = spec["optimizer"]
    return RunConfig(
        workload=WorkloadConfig(
            spec["model"],
            spec.get("data", task.name),
            dict(spec["model_options"]),
            dict(spec.get("data_options") or {}),
        ),
        methods=[method],
        optimizer=OptimizerConfig(opt["name"], lr, opt.get("momentum", 0.0), lr_decay=1.0),
        bpm=BPMConfig(period, samples, regime.get("micro_batch", 8), rule or "robust"),
        loop=LoopConfig(epochs=spec["epochs"], batch_size=B, seed=seed),
        measure=MeasureConfig(paid=False),
        output=OutputConfig(out=None, progress=False),
    ).validate()


def run_one(
    spec: dict, task: data.Task, method: str, lr: float, seed: int, regime: dict, rule: str | Rule | None = None
) -> dict[str, Any]:
    """Train one model (:func:`run_config`, by :func:`recede.runs.run.train_method`); return its
    final metric (None if it diverged), curve and refreshes."""
    config = run_config(spec, task, method, lr, seed, regime, rule)
    workload = Workload.of(task, config.workload.model, config.workload.model_options, "cpu")
    classification = task.kind == "classification"
    refreshes: list[dict] = []

    def record_refresh(engine: Any, epoch: int, step: int, loss: float) -> None:
        if isinstance(engine, BPModified) and len(refreshes) < engine.refreshes and engine.last_stats is not None:
            refreshes.append(engine.last_stats.as_dict())

    start, diverged = time.perf_counter(), None
    try:
        history = train_method(workload, method, config, out=None, on_step=record_refresh).history
        key = "accuracy" if classification else "loss"
        curve = [(100 if classification else 1) * r.test[key] for r in history]
    except NonFiniteLossError as err:
        diverged, curve = str(err), []
    return {
        "method": method,
        "rule": rule,
        "lr": lr,
        "seed": seed,
        "period": config.bpm.period,
        "offset_samples": config.bpm.samples if parse_method(method).modified else None,
        "metric": curve[-1] if curve else None,
        "curve": curve,
        "diverged": diverged,
        "seconds": time.perf_counter() - start,
        "refreshes": refreshes,
    }


def run(
    out: Path,
    full: bool = False,
    progress: bool = True,
    data_root: str | None = None,
    config: dict | None = None,
    weights: dict[str | None, str] | None = None,
    on_checked: Callable[[], None] | None = None,
) -> Path:
    """Run the study and write its files.  ``config``: a preset's settings (default
    ``cpu.yaml``); ``on_checked()`` is called once the arguments are checked, before anything
    is written (``recede reproduce`` then prepares the results folder)."""
    if data_root is not None:
        raise ValueError("bpm-robustness runs offline data only; --data-root does not apply")
    if weights:
        raise ValueError("bpm-robustness trains every model from scratch; --weights does not apply")
    cfg = config or load_config(full)
    if on_checked is not None:
        on_checked()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "bpm_robustness.json"
    previous = json.loads(saved.read_text()) if saved.exists() else {}
    same = (previous.get("config", {}) | {"diagnosis": cfg.get("diagnosis")}) == cfg  # it only picks a plot
    runs: dict[str, dict] = previous.get("runs", {}) if same else {}
    begin = time.perf_counter()

    def add(key: str, run: Callable[[], dict]) -> None:
        if key in runs:
            return
        record = runs[key] = run()
        write_json(out / "bpm_robustness.json", {"config": cfg, "runs": runs})
        if progress:
            state = "diverged" if record["diverged"] else f"{record['metric']:.4g}"
            print(f"[{time.perf_counter() - begin:6.0f} s] {key}: {state} ({record['seconds']:.1f} s)", flush=True)

    fresh = cfg.get("fresh_regime")
    with torch_threads(cfg.get("threads")):
        for name, spec in cfg["tasks"].items():
            task = data.load(spec["data"], **spec["data_options"])
            for lr in spec["lrs"]:
                for seed in cfg["seeds"]:
                    for method, rule in [("bp", None), ("ff", None)] + [("bpm-ff", s) for s in cfg["rules"]]:
                        key = run_key(name, lr, seed, "BP" if method == "bp" else label(rule))
                        add(key, partial(run_one, spec, task, method, lr, seed, cfg["regime"], rule))
                    if fresh and fresh["task"] == name and fresh["lr"] == lr:
                        regime = cfg["regime"] | {k: fresh[k] for k in ("period_epochs", "offset_samples")}
                        for rule in cfg["rules"]:
                            add(
                                run_key(name, lr, seed, label(rule, fresh=True)),
                                partial(run_one, spec, task, "bpm-ff", lr, seed, regime, rule),
                            )
    summary = summarise(cfg, runs)
    diagnosis = diagnose(cfg, runs)
    seconds = sum(r["seconds"] for r in runs.values())
    write_json(
        out / "bpm_robustness.json",
        {
            "config": cfg,
            "machine": machine(),
            "runs": runs,
            "summary": summary,
            "diagnosis": diagnosis,
            "seconds": seconds,
        },
    )
    plot_results(cfg, summary, out / "results.png")
    plot_diagnosis(cfg, runs, out / "diagnosis.png")
    report = out / "report.md"
    report.write_text(render(cfg, summary, diagnosis, seconds))
    return report


def run_key(task: str, lr: float, seed: int, name: str) -> str:
    return f"{task} | lr {lr:g} | seed {seed} | {name}"


def _stats(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None when there are no values / one value)."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def summarise(cfg: dict, runs: dict[str, dict]) -> list[dict[str, Any]]:
    """One row per (task, lr, method): mean ± sd over seeds, divergences, and for BP-modified
    rows the paired difference to FF over the seeds (positive = better than FF)."""
    rows = []
    fresh = cfg.get("fresh_regime") or {}
    for name, spec in cfg["tasks"].items():
        higher = spec["data"] not in ("trig", "linear")
        for lr in spec["lrs"]:
            names = ["BP", "FF"] + [label(s) for s in cfg["rules"]]
            if fresh.get("task") == name and fresh.get("lr") == lr:
                names += [label(s, fresh=True) for s in cfg["rules"]]
            for method in names:
                found = [runs.get(run_key(name, lr, s, method)) for s in cfg["seeds"]]
                records = [r for r in found if r is not None]
                values = [r["metric"] for r in records if r["metric"] is not None]
                mean, sd = _stats(values)
                row = {
                    "task": name,
                    "lr": lr,
                    "method": method,
                    "mean": mean,
                    "sd": sd,
                    "seeds": len(records),
                    "diverged": sum(r["metric"] is None for r in records),
                    "higher_is_better": higher,
                }
                if method.startswith("FF+BPM"):
                    row |= _paired(runs, name, lr, cfg["seeds"], method, higher)
                rows.append(row)
    return rows


def _paired(runs: dict, task: str, lr: float, seeds: list[int], method: str, higher: bool) -> dict:
    """Paired difference to FF over seeds (sign: positive is better); a diverged run loses."""
    diffs, lost = [], 0
    for s in seeds:
        ff, bpm = runs.get(run_key(task, lr, s, "FF")), runs.get(run_key(task, lr, s, method))
        if ff is None or bpm is None:
            continue
        if bpm["metric"] is None:
            lost += ff["metric"] is not None
            continue
        if ff["metric"] is not None:
            diffs.append((bpm["metric"] - ff["metric"]) * (1 if higher else -1))
    mean, sd = _stats(diffs)
    se = sd / math.sqrt(len(diffs)) if sd is not None else None
    worse = lost > 0 or (mean is not None and mean < 0 and (se is None or mean < -se))
    return {"vs FF": mean, "vs FF se": se, "verdict": "worse" if worse else "not worse"}


def diagnose(cfg: dict, runs: dict[str, dict]) -> dict[str, dict]:
    """Per rule, over every (refresh, modified block) of every main-regime run: the range of a,
    how often a < 0 or |a| > 10, how often λ > 0, and — of the periods that applied an offset
    (λ > 0) — how often the period's estimator ĝ_end = a ḡ_h + λ Δ was worse than the local
    gradient at the period's end, on the next refresh's (held-out) samples.  Over the refreshes
    that tested a last offset, the mean cosines to ḡ_T (all modified blocks together) of the new
    estimator on its own samples (``cos_in_sample``), of the last period's estimator at its end
    on these independent samples (``cos_held_out``) and of the local gradient (``cos_local``)."""
    out = {}
    for rule in cfg["rules"]:
        suffix = f" | {label(rule)}"
        blocks, tests, cosines = [], [], []
        for key, record in runs.items():
            if not key.endswith(suffix):
                continue
            stats = record["refreshes"]
            cosines += [
                (s["cos_all"], s["cos_held_out_all"], s["cos_local_all"])
                for s in stats
                if s["cos_held_out_all"] is not None
            ]
            for i, s in enumerate(stats):
                modified = [t for t in range(len(s["a"])) if s["bias"][t] or s["variance"][t]]
                blocks += [(s["a"][t], s["lam"][t]) for t in modified]
                if i + 1 < len(stats):
                    after = stats[i + 1]
                    tests += [after["cos_held_out"][t] < after["cos_local"][t] for t in modified if s["lam"][t] > 0]
        a = [x for x, _ in blocks]
        out[rule] = {
            "block_refreshes": len(blocks),
            "a_min": min(a, default=None),
            "a_max": max(a, default=None),
            "share_a_negative": _share(x < 0 for x in a),
            "share_a_above_10": _share(abs(x) > 10 for x in a),
            "share_lambda_positive": _share(lam > 0 for _, lam in blocks),
            "mean_lambda": statistics.fmean(lam for _, lam in blocks) if blocks else None,
            "offset_periods_tested": len(tests),
            "share_held_out_worse": _share(tests),
        }
        out[rule] |= {
            name: statistics.fmean(c[i] for c in cosines) if cosines else None
            for i, name in enumerate(("cos_in_sample", "cos_held_out", "cos_local"))
        }
    return out


def _share(flags) -> float | None:
    flags = list(flags)
    return sum(flags) / len(flags) if flags else None


def plot_results(cfg: dict, rows: list[dict], path: Path) -> None:
    """One panel per task: per learning rate, each method's mean ± sd over seeds (× = diverged)."""
    tasks = list(cfg["tasks"])
    methods = ["BP", "FF"] + [label(s) for s in cfg["rules"]]
    with figure(path, 1, len(tasks), figsize=(3.6 * len(tasks), 3.6), squeeze=False) as (fig, axes):
        for ax, name in zip(axes[0], tasks):
            lrs = cfg["tasks"][name]["lrs"]
            width = 0.8 / len(methods)
            for i, method in enumerate(methods):
                for j, lr in enumerate(lrs):
                    row = next(r for r in rows if r["task"] == name and r["lr"] == lr and r["method"] == method)
                    x = j + (i - (len(methods) - 1) / 2) * width
                    if row["mean"] is not None:
                        ax.bar(
                            x,
                            row["mean"],
                            width,
                            yerr=row["sd"] or 0,
                            color=f"C{i}",
                            label=method if j == 0 else None,
                            capsize=2,
                        )
                    if row["diverged"]:
                        ax.plot(x, 0, "kx")
            higher = cfg["tasks"][name]["data"] not in ("trig", "linear")
            ax.set(
                xticks=range(len(lrs)),
                xticklabels=[f"{lr:g}" for lr in lrs],
                xlabel="learning rate",
                ylabel="test accuracy (%)" if higher else "test MSE (log)",
                title=name,
            )
            if not higher:
                ax.set_yscale("log")
        axes[0][0].legend(fontsize=7)


def plot_diagnosis(cfg: dict, runs: dict[str, dict], path: Path) -> None:
    """The diagnosis run: a and λ per block over refreshes, and held-out vs local cosines."""
    d = cfg["diagnosis"]
    with figure(path, 1, 3, figsize=(15, 4)) as (fig, axes):
        for rule, style in zip(cfg["rules"], ("-", "--")):
            record = runs.get(run_key(d["task"], d["lr"], d["seed"], label(rule)))
            if record is None or not record["refreshes"]:
                continue
            stats = record["refreshes"]
            steps = [s["step"] for s in stats]
            modified = [t for t in range(len(stats[0]["a"])) if any(s["bias"][t] or s["variance"][t] for s in stats)]
            for t in modified:
                axes[0].plot(steps, [s["a"][t] for s in stats], style, color=f"C{t % 10}")
                axes[1].plot(steps, [s["lam"][t] for s in stats], style, color=f"C{t % 10}")
            tested = [s for s in stats if s["cos_held_out_all"] is not None]
            axes[2].plot(
                [s["step"] for s in tested],
                [s["cos_held_out_all"] for s in tested],
                style,
                color="C3",
                label=f"{rule}: held-out cos(ĝ_end, g_T)",
            )
            axes[2].plot(
                steps, [s["cos_all"] for s in stats], style, color="C2", label=f"{rule}: in-sample cos(ĝ, g_T)"
            )
            axes[2].plot(
                steps,
                [s["cos_local_all"] for s in stats],
                style,
                color="k",
                lw=0.8,
                label=f"{rule}: local cos(g_h, g_T)",
            )
        axes[0].set(
            xlabel="step",
            ylabel="a per block",
            yscale="symlog",
            title=f"{d['task']}, lr {d['lr']:g}, seed {d['seed']}: a (— {cfg['rules'][0]}, -- others)",
        )
        axes[1].set(xlabel="step", ylabel="λ per block", title="λ per block")
        axes[2].set(xlabel="step", ylabel="cosine (all modified blocks)", title="estimator vs true gradient")
        axes[2].legend(fontsize=7)


def _cell(row: dict) -> str:
    if row["mean"] is None:
        return f"diverged ({row['diverged']}/{row['seeds']})"
    text = f"{row['mean']:.4g} ± {row['sd']:.2g}" if row["sd"] is not None else f"{row['mean']:.4g}"
    return text + (f" ({row['diverged']}/{row['seeds']} diverged)" if row["diverged"] else "")


def results_table(cfg: dict, rows: list[dict], fresh: bool = False) -> str:
    """Markdown: one line per (task, lr) with every method's mean ± sd and the verdicts."""
    names = ["BP", "FF"] + [label(s, fresh) for s in cfg["rules"]]
    lines = []
    for name, spec in cfg["tasks"].items():
        for lr in spec["lrs"]:
            cells = {r["method"]: r for r in rows if r["task"] == name and r["lr"] == lr}
            if not all(n in cells for n in names):
                continue
            line = {"task": name, "lr": f"{lr:g}"} | {n: _cell(cells[n]) for n in names}
            for s in cfg["rules"]:
                r = cells[label(s, fresh)]
                diff = "n/a" if r["vs FF"] is None else f"{r['vs FF']:+.3g} ± {r['vs FF se'] or 0:.2g}"
                line[f"{s} − FF"] = f"{diff} ({r['verdict']})"
            lines.append(line)
    return markdown_table(lines, ["task", "lr"] + names + [f"{s} − FF" for s in cfg["rules"]])


def render(cfg: dict, rows: list[dict], diagnosis: dict, seconds: float) -> str:
    r = cfg["regime"]
    text = [
        "# Robustness of the BP-modified loss: BP-modified FF against FF",
        "",
        f"Seeds {cfg['seeds']}; every run of a (task, seed) starts from the same weights and data order. "
        f"Regime (Paper B §6): K = {r['period_epochs']:g} epoch, B' = {100 * r['offset_share']:.2g} % of K·B "
        f"rounded to a multiple of b' = {r['micro_batch']} (at least two micro-batches). "
        "Cells: final test accuracy (%) or, for m2, test MSE; mean ± sample sd over seeds. "
        "`X − FF`: the paired difference over seeds (positive = better than FF), mean ± standard error; "
        "'worse' where it is below zero by more than one standard error or a run diverged.",
        "",
        "## Paper B's regime",
        "",
        results_table(cfg, rows),
        "",
    ]
    fresh = cfg.get("fresh_regime")
    if fresh:
        text += [
            f"## Another regime: fresher offsets (K = {fresh['period_epochs']:g} epoch, "
            f"B' = {fresh['offset_samples']})",
            "",
            results_table(cfg, rows, fresh=True),
            "",
        ]
    worse = {s: sum(1 for row in rows if row["method"] == label(s) and row["verdict"] == "worse") for s in cfg["rules"]}
    cases = sum(len(spec["lrs"]) for spec in cfg["tasks"].values())
    text += [
        "Worse than FF, of " + f"{cases} (task, lr) cases: " + ", ".join(f"{s} {n}" for s, n in worse.items()) + ".",
        "",
        "## Diagnosis: every refresh of every run above",
        "",
        markdown_table(
            [{"rule": s} | d for s, d in diagnosis.items()],
            [
                "rule",
                "block_refreshes",
                "a_min",
                "a_max",
                "share_a_negative",
                "share_a_above_10",
                "share_lambda_positive",
                "mean_lambda",
                "offset_periods_tested",
                "share_held_out_worse",
                "cos_in_sample",
                "cos_held_out",
                "cos_local",
            ],
        ),
        "",
        "Per (refresh, modified block).  `share_held_out_worse`: of the periods that applied an offset "
        "(λ > 0) and were followed by a refresh, the share whose estimator ĝ_end = a ḡ_h + λ Δ was further "
        "from g_T than the local gradient at the period's end: cos(ĝ_end, g_T) < cos(g_h, g_T) on the next "
        "refresh's independent samples.  `cos_*`: mean over refreshes (from the second on) of the cosine to "
        "ḡ_T, over all modified blocks, of the new estimator on its own samples, of the last period's estimator "
        "at its end on these independent samples, and of the local gradient.",
        "",
        "![results](results.png)",
        "",
        "![diagnosis](diagnosis.png)",
        "",
        f"The runs took {seconds / 60:.1f} min in all (the sum of their wall times, resumed runs included).",
        "",
    ]
    return "\n".join(text)
