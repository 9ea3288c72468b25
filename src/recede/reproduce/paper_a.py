"""``recede reproduce paper-a``: Paper A's figures, each number mean ± sd over seeds.

A configuration (``experiments/paper_a/cpu.yaml``, ``full.yaml``: Paper A App. D) has up to
three sections, run in this order (``only`` picks some):

* ``models`` — M1, M2, M3: Figs. 2, E1, E2 and 5 (:mod:`recede.reproduce.paper_a_selection`);
* ``sweeps`` — ResNet-50 (full tuning) and ViT-B/16 (LoRA): Figs. 3–4
  (:mod:`recede.reproduce.paper_a_sweeps`);
* ``rate`` — Theorem C.8: r(h) against cos²θ_h (:mod:`recede.reproduce.paper_a_rate`).

Everything is checked before the first step (:mod:`recede.reproduce.configs`).  Writes
``results.json``, the sections' PNG figures and ``report.md`` under ``out``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from recede.horizon.selection import COST_SHAPES, OBJECTIVES
from recede.reproduce import configs, paper_a_rate, paper_a_selection, paper_a_sweeps, torch_threads
from recede.runs.reports import machine, write_json

SECTIONS = {"models": paper_a_selection, "sweeps": paper_a_sweeps, "rate": paper_a_rate}
TITLES = {
    "models": "M1–M3: Figs. 2, E1, E2, 5 and Theorem 3.4",
    "sweeps": "ResNet-50 and ViT: Figs. 3–4",
    "rate": "Theorem C.8: r(h) against cos²θ_h",
}
SELECTION_KEYS = ("probe_batches", "subset_size", "objectives", "schedule")
MODEL_KEYS = ("model", "data", "lr", "batch_size", "epochs", "fig2_epochs")


def load_config(full: bool) -> dict:
    """``experiments/paper_a/full.yaml`` or ``cpu.yaml`` from the source checkout."""
    return configs.read_config("paper-a", "full" if full else "cpu")


def sections(config: dict, only: list[str] | None = None) -> list[str]:
    """The sections of ``config`` to run, in order; ``ValueError`` for a section it lacks."""
    present = [s for s in SECTIONS if s in config]
    if only is None:
        return present
    unknown = [s for s in only if s not in SECTIONS]
    missing = [s for s in only if s in SECTIONS and s not in config]
    if unknown or missing:
        raise ValueError(
            f"paper-a: --only takes {', '.join(SECTIONS)}"
            + (f"; this configuration has no {', '.join(missing)}" if missing else "")
        )
    return [s for s in present if s in only]


def entries(config: dict) -> dict[str, dict]:
    """Every model/data entry of every section, by label."""
    return {label: e for module in SECTIONS.values() for label, e in module.entries(config).items()}


def check_config(config: dict) -> None:
    """``ValueError`` naming the first problem: a missing setting, an unknown model, dataset or
    option, a bad horizon list."""
    seeds = config.get("seeds")
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise ValueError(f"paper-a: seeds must be a non-empty list of integers, got {seeds!r}")
    if not any(s in config for s in SECTIONS):
        raise ValueError(f"paper-a: the configuration has none of the sections {', '.join(SECTIONS)}")
    for label, entry in entries(config).items():
        configs.check_entry(label, entry)
    if "models" in config:
        missing = [k for k in SELECTION_KEYS if k not in config]
        missing += [f"models.{key}.{k}" for key, e in config["models"].items() for k in MODEL_KEYS if k not in e]
        if missing:
            raise ValueError(f"paper-a: missing setting(s) {missing}")
    if "objectives" in config:
        _check_selection(config)
    for label, entry in entries(config).items():
        if not label.startswith("sweeps.") and ("init" in entry or "init_skip" in entry):
            raise ValueError(f"paper-a: {label}: init is read by the sweeps section only")
    for label, entry in paper_a_sweeps.entries(config).items():
        paper_a_sweeps.check(label, entry)
        if entry.get("select"):
            missing = [k for k in ("probe_batches", "subset_size", "objectives") if k not in config]
            if missing:
                raise ValueError(f"paper-a: {label}: select needs the setting(s) {missing}")
    for label, workload in paper_a_rate.entries(config).items():
        paper_a_rate.check(label, workload, config["rate"].get("steps"))


def _check_selection(config: dict) -> None:
    """``objectives`` (Table D3's ε, the O2 weight per cost shape, c) and ``schedule``'s runs."""
    goals = config["objectives"]
    weight = goals.get("weight") if isinstance(goals, dict) else None
    if not isinstance(goals, dict) or not isinstance(weight, dict) or set(weight) != set(COST_SHAPES):
        raise ValueError(
            "paper-a: objectives needs eps, c and weight: {linear: W, ladder: W} (the O2 weight per "
            f"cost shape), got {goals!r}"
        )
    for key, value in [("eps", goals.get("eps")), ("c", goals.get("c"))] + [
        (f"weight.{k}", v) for k, v in weight.items()
    ]:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"paper-a: objectives.{key} must be a number >= 0, got {value!r}")
    schedule = config.get("schedule")
    if schedule is None:
        return
    runs = schedule.get("runs") if isinstance(schedule, dict) else None
    if not isinstance(runs, list) or not all(
        isinstance(r, dict) and r.get("objective") in OBJECTIVES and r.get("cost_shape") in COST_SHAPES for r in runs
    ):
        raise ValueError(
            f"paper-a: schedule.runs must be a list of {{objective: {'|'.join(OBJECTIVES)}, "
            f"cost_shape: {'|'.join(COST_SHAPES)}}}, got {runs!r}"
        )


def run(
    out: Path,
    full: bool = False,
    progress: bool = True,
    config: dict | None = None,
    data_root: str | None = None,
    weights: dict[str | None, str] | None = None,
    only: list[str] | None = None,
    on_checked: Callable[[], None] | None = None,
    init: dict[str | None, str] | None = None,
    init_skip: list[str] | None = None,
) -> Path:
    """Check the configuration and its data and weights, run its sections, return ``report.md``.

    ``data_root``: the folder the CIFAR/Tiny-ImageNet entries read; ``weights``: from
    :func:`recede.reproduce.configs.parse_weights`; ``init``/``init_skip``: ``--init`` (the same
    form) and ``--init-skip``, for the sweeps' entries (:func:`recede.reproduce.configs.apply_init`);
    ``on_checked`` is called once everything is checked, before anything is written.
    """
    config = config if config is not None else load_config(full)
    chosen = sections(config, only)
    check_config(config)
    picked = {label: e for label, e in entries(config).items() if label.split(".")[0] in chosen}
    configs.apply_sources(picked, data_root, weights or {}, "paper-a")
    if init or init_skip:
        configs.apply_init(
            {k: e for k, e in picked.items() if k.startswith("sweeps.")}, init or {}, init_skip, "paper-a"
        )
    check_config(config)  # again: a --weights file must not meet a pretrain section, nor --init
    configs.resolve_init(picked, "paper-a")
    configs.check_sources(picked, "paper-a")
    if on_checked is not None:
        on_checked()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    summary: dict = {"config": config, "sections": {}}
    with torch_threads(config.get("threads")):
        summary["threads"] = torch.get_num_threads()
        summary["machine"] = machine()
        for name in chosen:
            begun = time.perf_counter()
            summary["sections"][name] = SECTIONS[name].run(config, progress) | {"seconds": time.perf_counter() - begun}
            write_json(out / "results.json", summary)
    summary["seconds"] = time.perf_counter() - start
    write_json(out / "results.json", summary)
    return write_report(summary, out)


def write_report(summary: dict, out: Path) -> Path:
    """The figures and ``report.md`` of a run's ``results.json`` contents (re-renderable)."""
    config = summary["config"]
    lines = [
        "# Paper A reproduction (MPC framework, horizon selection)",
        "",
        f"Total time {summary['seconds'] / 60:.1f} min with {summary['threads']} torch thread(s); "
        f"seeds {', '.join(map(str, config['seeds']))}.",
        "",
    ]
    for name, result in summary["sections"].items():
        SECTIONS[name].plot(result, out)
        lines += [
            f"## {TITLES[name]}",
            "",
            f"{result['seconds'] / 60:.1f} min.",
            "",
            *SECTIONS[name].render(result, config),
        ]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report
