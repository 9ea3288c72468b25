"""Reproduce Paper A's experiments on M1, M2 and M3: Fig. 2, Fig. E1, Fig. E2 and Fig. 5.

For each model of ``experiments/paper_a/{cpu,full}.yaml`` (Paper A App. D, Table D2):

1. At initialisation, measure cos θ_h and M(h) for every h = 1..T on a few probe batches
   (:func:`recede.gradient_cosine`); Algorithm 1 sees only the subset H of them and picks ĥ*
   for each Table D3 column: O1/O2 × linear/ladder cost (:func:`recede.selection.solve`).
2. Train from the same initial weights and data order with every fixed horizon (or the
   config's ``train_horizons`` plus every selected one) (Fig. E2), LoCo3 and LoCo5
   (App. D.1) and their double variants (eq. 20), with Paper A's SGD and lr × 0.9 rule.  During the BP run,
   cos θ_h is re-measured at the epochs of Fig. 2.
3. Score each algorithm a by ``r(a) = ln(J_a/J_0) / ln(J_BP/J_0)`` (eq. 14, J the training loss
   after the last epoch) and its memory M(a) (saved-for-backward bytes), turn that into the
   objective value of each column and into ``Rel(a)`` (eq. 19; infeasible = 1.5) for Fig. 5.
4. Beyond the paper: a :class:`recede.schedule.HorizonSchedule` run per configured objective,
   compared with the best fixed horizon in hindsight on that same objective.  Its cost is the
   epoch-average of C(M(h_e)) — pay-per-use, each epoch pays for the memory it used.

Writes ``results.json``, ``fig2.png``, ``figE1.png``, ``figE2.png``, ``fig5.png`` and
``report.md`` (our numbers beside the paper's claims) under ``out``.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Subset

from recede import data, models
from recede.fidelity import gradient_cosine
from recede.memory import measure
from recede.methods import build_method
from recede.plots import figure
from recede.reports import markdown_table, write_json
from recede.reproduce import torch_threads
from recede.schedule import HorizonSchedule
from recede.selection import (
    COSTS,
    OBJECTIVES,
    cost_of,
    default_horizons,
    default_M0,
    objective_value,
    relative_scores,
    solve,
)
from recede.theory.deep_linear import theorem_exponent
from recede.train import LossIncreaseDecay, batches, evaluate, make_optimizer, train

CONFIG_DIR = Path(__file__).resolve().parents[3] / "experiments" / "paper_a"
COLUMNS = [(o, c) for o in OBJECTIVES for c in COSTS]
LABEL = {"constraint": "O1", "weighted": "O2", "linear": "C1", "ladder": "C2"}
BASELINES = ["BP", "FF", "LoCo3", "LoCo5"]
OURS = "Ours"
# LoCo as h = 2 on 3 or 5 stages (Remark 3.1), and its double gradient (eq. 20), reported beside
# Fig. 5 but outside Rel(a), which is normalised over the paper's five rows
LOCO = {"LoCo3": "loco:3", "LoCo5": "loco:5", "LoCo3-double": "loco-double:3",
        "LoCo5-double": "loco-double:5"}
DOUBLES = ["LoCo3-double", "LoCo5-double"]


def column_name(objective: str, cost: str) -> str:
    return f"{LABEL[objective]}-{LABEL[cost]}"


def load_config(full: bool) -> dict:
    """``experiments/paper_a/full.yaml`` or ``cpu.yaml`` from the source checkout."""
    import yaml

    path = CONFIG_DIR / ("full.yaml" if full else "cpu.yaml")
    if not path.exists():
        raise FileNotFoundError(f"Paper A config {path} not found; run from a source checkout of recede")
    return yaml.safe_load(path.read_text())


def user_data(full: bool, data_root: str) -> tuple[str, dict]:
    """The dataset and options that ``--data-root`` gives: CIFAR-10 for M3."""
    return "cifar10", {"root": data_root}


def run(out: Path, full: bool = False, progress: bool = True, config: dict | None = None,
        data_root: str | None = None) -> Path:
    """Run the reproduction and return the path of ``report.md``.

    With ``data_root`` (a folder holding ``cifar-10-batches-py``) M3 trains on CIFAR-10
    instead of the offline digits (``--full``: the first 45 000 images, Paper A Table D2).
    """
    config = config or load_config(full)
    if data_root is not None:
        name, options = user_data(full, data_root)
        config["models"]["M3"] |= {"data": name, "data_options": options}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with torch_threads(config.get("threads")):
        results = {key: run_model(key, spec, config, progress) for key, spec in config["models"].items()}
        theory = {"smooth_T128": theorem_exponent(128, kind="smooth"),
                  "smooth_T128_midpoint": theorem_exponent(128, kind="smooth", midpoint=True),
                  "gaussian_T256": float(np.mean([theorem_exponent(256, kind="gaussian", seed=s)
                                                  for s in range(4)]))}
    seconds = time.perf_counter() - start
    fig5 = figure5_scores(results, config["objectives"])
    summary = {"config": config, "seconds": seconds, "threads": torch.get_num_threads(),
               "models": results, "fig5": fig5, "theory": theory}
    write_json(out / "results.json", summary)
    plot_fig2(results, out / "fig2.png")
    plot_e1(results, out / "figE1.png")
    plot_e2(results, out / "figE2.png")
    plot_fig5(fig5, out / "fig5.png")
    report = out / "report.md"
    report.write_text(render_report(summary))
    return report


# -- one model ------------------------------------------------------------------------------

def run_model(key: str, spec: dict, config: dict, progress: bool) -> dict[str, Any]:
    started = time.perf_counter()
    seed, goals = config["seed"], config["objectives"]
    task = data.load(spec["data"], **spec.get("data_options", {}))
    train_set = task.train
    if spec.get("train_subset"):
        train_set = Subset(task.train, range(min(spec["train_subset"], len(task.train))))
    classification = task.kind == "classification"
    torch.manual_seed(seed)
    net = models.build(spec["model"], task, **spec.get("model_options", {}))
    T = net.T
    init = copy.deepcopy(net.state_dict())
    probe = list(islice(batches(train_set, spec["batch_size"], True, seed + 1), config["probe_batches"]))
    J0 = evaluate(net, train_set, classification=classification)["loss"]

    # Algorithm 1 at initialisation: all horizons measured, the algorithm sees the subset H
    all_h = list(range(1, T + 1))
    fid0 = gradient_cosine(net, probe, all_h)
    memory = fid0.memory
    H = default_horizons(T, config["subset_size"])
    selected = {}
    for objective, cost in COLUMNS:
        choice = solve({h: fid0.cos[h] for h in H}, {h: memory[h] for h in H}, T, objective,
                       goals["eps"], goals["lam"][cost], cost, goals["c"], default_M0(memory, cost))
        selected[column_name(objective, cost)] = {"h": choice.h, "feasible": choice.feasible,
                                                   "message": choice.message}

    trained = spec.get("train_horizons", "all")
    horizons = sorted(set(all_h if trained == "all" else trained) | {1, T}
                      | {s["h"] for s in selected.values()})
    cos_by_epoch = {0: fid0.cos}

    def fig2_hook(record):
        if record.epoch + 1 in spec["fig2_epochs"]:
            cos_by_epoch[record.epoch + 1] = gradient_cosine(net, probe, all_h, measure_memory=False).cos

    def fit(label: str, method, on_epoch=None) -> dict:
        optimizer = make_optimizer(net.parameters(), "sgd", spec["lr"])
        history = train(net, method, train_set, optimizer, epochs=spec["epochs"],
                        batch_size=spec["batch_size"], seed=seed, lr_rule=LossIncreaseDecay(optimizer),
                        classification=classification, progress=progress,
                        description=f"{key} {label}", on_epoch=on_epoch)
        return {"curve": [r.train_loss for r in history],
                "final": evaluate(net, train_set, classification=classification)["loss"]}

    runs: dict[str, dict] = {}
    for h in horizons:
        net.load_state_dict(init)
        runs[f"h={h}"] = fit(f"h={h}", build_method(net, f"mpc:{h}"), fig2_hook if h == T else None)
        runs[f"h={h}"]["memory"] = memory[h]
    for name in LOCO:
        net.load_state_dict(init)
        method = build_method(net, LOCO[name])
        _, report = measure(lambda: method.backward(*probe[0]), module=net)
        net.zero_grad(set_to_none=True)
        net.load_state_dict(init)
        runs[name] = fit(name, method) | {"memory": report.saved_peak_bytes}

    J_bp = runs[f"h={T}"]["final"]
    for r in runs.values():
        r["r"] = rate(r["final"], J0, J_bp)

    schedules = []
    for sched_spec in config["schedule"]["runs"]:
        objective, cost = sched_spec["objective"], sched_spec["cost"]
        net.load_state_dict(init)
        schedule = HorizonSchedule(net, probe, config["schedule"]["every"], objective, goals["eps"],
                                   goals["lam"][cost], cost, goals["c"], default_M0(memory, cost), H)
        result = fit(f"schedule {column_name(objective, cost)}", schedule,
                     lambda record: schedule.epoch_end(record.epoch))
        per_epoch = schedule.horizons_by_epoch(spec["epochs"])
        schedules.append({"objective": objective, "cost": cost, "horizons": per_epoch,
                          "history": schedule.history, **result,
                          "r": rate(result["final"], J0, J_bp),
                          "mean_memory": float(np.mean([memory[h] for h in per_epoch]))})

    return {"T": T, "n_train": len(train_set), "J0": J0, "subset_H": H, "memory": memory,
            "cos_by_epoch": cos_by_epoch, "selected": selected, "runs": runs,
            "schedules": schedules, "seconds": time.perf_counter() - started,
            "spec": spec, "classification": classification}


def rate(J: float, J0: float, J_bp: float) -> float:
    """``r = ln(J/J0) / ln(J_BP/J0)`` (Paper A eq. 14); 1 for BP."""
    denominator = math.log(J_bp / J0)
    return math.log(J / J0) / denominator if denominator != 0 else float("nan")


def algorithm_runs(model: dict, column: str) -> dict[str, dict]:
    """The run behind each Fig. 5 row for one column."""
    T = model["T"]
    runs = model["runs"]
    return {"BP": runs[f"h={T}"], "FF": runs["h=1"], "LoCo3": runs["LoCo3"], "LoCo5": runs["LoCo5"],
            OURS: runs[f"h={model['selected'][column]['h']}"]}


def objective_for(r: float, costs: list[float], objective: str, goals: dict, cost: str) -> float | None:
    """The objective of a run that paid ``costs`` (one C(M) per epoch): their mean is its cost."""
    C = float(np.mean(costs))
    if objective == "constraint":
        return C if r >= 1 - goals["eps"] else None
    return -r + goals["lam"][cost] * C


def figure5_scores(results: dict, goals: dict) -> dict:
    """Objective values and Rel(a) per model × Table D3 column, with the best fixed horizon in
    hindsight; also fills each schedule run's objective ``value``."""
    columns = {}
    for key, model in results.items():
        memory = model["memory"]
        for objective, cost in COLUMNS:
            name = column_name(objective, cost)
            M0 = default_M0(memory, cost)
            score = lambda run: objective_value(run["r"], run["memory"], objective, goals["eps"],
                                                goals["lam"][cost], cost, goals["c"], M0)
            values = {a: score(run) for a, run in algorithm_runs(model, name).items()}
            doubles = {a: score(model["runs"][a]) for a in DOUBLES}
            fixed = {h: score(model["runs"][f"h={h}"]) for h in sorted(memory) if f"h={h}" in model["runs"]}
            feasible = {h: v for h, v in fixed.items() if v is not None}
            best_h = min(feasible, key=lambda h: (feasible[h], h)) if feasible else None
            columns[f"{key} {name}"] = {
                "model": key, "column": name, "objective": objective, "cost": cost,
                "values": values, "rel": relative_scores(values), "doubles": doubles,
                "selected_h": model["selected"][name]["h"],
                "selection_feasible": model["selected"][name]["feasible"],
                "best_fixed_h": best_h, "best_fixed_value": feasible.get(best_h) if feasible else None,
                "fixed_values": {str(h): v for h, v in fixed.items()}}
        for sched in model["schedules"]:
            M0 = default_M0(memory, sched["cost"])
            costs = [float(cost_of(memory[h], sched["cost"], goals["c"], M0)) for h in sched["horizons"]]
            sched["value"] = objective_for(sched["r"], costs, sched["objective"], goals, sched["cost"])
            column = columns[f"{key} {column_name(sched['objective'], sched['cost'])}"]
            sched["best_fixed_h"], sched["best_fixed_value"] = column["best_fixed_h"], column["best_fixed_value"]
            sched["selected_value"] = column["values"][OURS]
    return columns


# -- summaries -------------------------------------------------------------------------------

def decay_slope(cos: dict, T: int) -> float | None:
    """Slope of log(1 − cos θ_h) against log(T − h) over h < T (Fig. 2's axes)."""
    pts = [(T - int(h), 1 - c) for h, c in cos.items() if int(h) < T and 1 - c > 1e-12]
    if len(pts) < 2:
        return None
    return float(np.polyfit(np.log([p[0] for p in pts]), np.log([p[1] for p in pts]), 1)[0])


def memory_fit(memory: dict) -> tuple[float, float, float]:
    """Least-squares ``M(h) = a h + b`` over every h and its R² (Fig. E1)."""
    hs = np.array(sorted(memory), dtype=float)
    ms = np.array([memory[int(h)] for h in hs], dtype=float)
    a, b = np.polyfit(hs, ms, 1)
    residual = ms - (a * hs + b)
    total = ((ms - ms.mean()) ** 2).sum()
    return float(a), float(b), float(1 - (residual ** 2).sum() / total) if total > 0 else 1.0


def mean_rel(fig5: dict) -> dict[str, dict[str, float]]:
    """Average Rel(a) per model and algorithm (Fig. 5 bottom), and over all models."""
    out: dict[str, dict[str, float]] = {}
    for column in fig5.values():
        for a, v in column["rel"].items():
            out.setdefault(column["model"], {}).setdefault(a, []).append(v)
            out.setdefault("all", {}).setdefault(a, []).append(v)
    return {m: {a: float(np.mean(v)) for a, v in algs.items()} for m, algs in out.items()}


# -- figures ---------------------------------------------------------------------------------

def _per_model(results: dict, path: Path) -> Iterator[tuple[Any, str, dict]]:
    """One panel per model, side by side, written to ``path``: yields (axes, key, model)."""
    with figure(path, 1, len(results), figsize=(4.5 * len(results), 3.6), squeeze=False) as (_, axes):
        for ax, (key, model) in zip(axes[0], results.items()):
            yield ax, key, model


def plot_fig2(results: dict, path: Path) -> None:
    for ax, key, model in _per_model(results, path):
        T = model["T"]
        for epoch, cos in sorted(model["cos_by_epoch"].items()):
            pts = sorted((T - int(h), max(1 - c, 1e-12)) for h, c in cos.items() if int(h) < T)
            ax.loglog([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3, label=f"epoch {epoch}")
        ax.set(title=f"{key}: {model['spec']['model']} (T={T})", xlabel="T − h", ylabel="1 − cos θ_h")
        ax.legend(fontsize=7)


def plot_e1(results: dict, path: Path) -> None:
    for ax, key, model in _per_model(results, path):
        memory = model["memory"]
        hs = np.array(sorted(memory))
        a, b, r2 = memory_fit(memory)
        ax.plot(hs, [memory[h] / 2**10 for h in hs], "o", label="measured")
        ax.plot(hs, (a * hs + b) / 2**10, "-", label=f"a·h + b, R² = {r2:.4f}")
        ax.set(title=f"{key}: saved-for-backward memory", xlabel="h", ylabel="M(h) [KiB]")
        ax.legend(fontsize=7)


def plot_e2(results: dict, path: Path) -> None:
    from matplotlib import colormaps

    for ax, key, model in _per_model(results, path):
        T = model["T"]
        fixed = sorted((int(k[2:]), r) for k, r in model["runs"].items() if k.startswith("h="))
        colors = colormaps["viridis"](np.linspace(0, 1, len(fixed)))
        for color, (h, r) in zip(colors, fixed):
            ax.semilogy(range(1, len(r["curve"]) + 1), r["curve"], color=color, lw=1,
                        label=f"h={h}" + (" (BP)" if h == T else " (FF)" if h == 1 else ""))
        for name in LOCO:
            ax.semilogy(range(1, len(model["runs"][name]["curve"]) + 1), model["runs"][name]["curve"],
                        "--", lw=1, label=name)
        ax.set(title=f"{key}: training loss", xlabel="epoch", ylabel="loss")
        ax.legend(fontsize=5, ncol=2)


def plot_fig5(fig5: dict, path: Path) -> None:
    names = list(fig5)
    algorithms = BASELINES + [OURS]
    grid = np.array([[fig5[n]["rel"][a] for n in names] for a in algorithms])
    with figure(path, 2, 1, figsize=(max(6, 0.75 * len(names)), 6.5),
                gridspec_kw={"height_ratios": [3, 2]}) as (fig, (top, bottom)):
        image = top.imshow(np.minimum(grid, 1.0), cmap="RdYlGn_r", vmin=0, vmax=1, aspect="auto")
        for i, a in enumerate(algorithms):
            for j, n in enumerate(names):
                text = "×" if fig5[n]["values"][a] is None else f"{grid[i, j]:.2f}"
                top.text(j, i, text, ha="center", va="center", fontsize=7)
        top.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
        top.set_yticks(range(len(algorithms)), algorithms)
        top.set_title("Rel(a) (eq. 19), lower is better; × infeasible (scored 1.5)")
        fig.colorbar(image, ax=top)
        averages = mean_rel(fig5)
        groups = [m for m in averages if m != "all"] + ["all"]
        width = 0.8 / len(algorithms)
        for k, a in enumerate(algorithms):
            bottom.bar(np.arange(len(groups)) + k * width, [averages[g][a] for g in groups], width, label=a)
        bottom.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, groups)
        bottom.set(ylabel="mean Rel(a)")
        bottom.legend(fontsize=7, ncol=len(algorithms))


# -- report ----------------------------------------------------------------------------------

def _verdict(ok: bool) -> str:
    return "**agrees**" if ok else "**disagrees**"


def render_report(summary: dict) -> str:
    results, fig5, goals = summary["models"], summary["fig5"], summary["config"]["objectives"]
    lines = ["# Paper A reproduction (MPC framework, horizon selection)", "",
             f"Total time {summary['seconds'] / 60:.1f} min with {summary['config'].get('threads') or 'default'} "
             f"torch thread(s).  Objectives (Table D3): O1 with 1 − ε = {1 - goals['eps']:g}; O2 with "
             f"λ = {goals['lam']['linear']:g} (linear cost C1) and {goals['lam']['ladder']:g} (ladder cost C2); "
             f"c = {goals['c']:g}, M0 = max M(h) (C1) or 0.3·max M(h) (C2).  r(a) = ln(J_a/J_0)/ln(J_BP/J_0) "
             "with J the training loss after the last epoch (eq. 14); memory = peak bytes saved for backward.",
             "", "## Settings", ""]
    rows = [{"model": k, "net": m["spec"]["model"], "T": m["T"], "data": m["spec"]["data"],
             "train samples": m["n_train"], "epochs": m["spec"]["epochs"], "lr": m["spec"]["lr"],
             "batch": m["spec"]["batch_size"], "minutes": m["seconds"] / 60} for k, m in results.items()]
    lines += [markdown_table(rows, list(rows[0])), ""]

    lines += ["## Fig. 2 — gradient fidelity against horizon during training", "",
              "![fig2](fig2.png)", "",
              "Slope of log(1 − cos θ_h) against log(T − h) (h < T), and 1 − cos θ_1 (FF), at each "
              "measured epoch of the BP run:", ""]
    rows, grows = [], []
    for key, m in results.items():
        epochs = sorted(m["cos_by_epoch"])
        for e in epochs:
            cos = m["cos_by_epoch"][e]
            rows.append({"model": key, "epoch": e, "slope": decay_slope(cos, m["T"]),
                         "1 − cos θ_1": 1 - cos[1], "1 − cos θ_{T/2}": 1 - cos[max(1, m["T"] // 2)]})
        first, last = m["cos_by_epoch"][epochs[0]], m["cos_by_epoch"][epochs[-1]]
        grows.append(1 - last[1] > 1 - first[1])
    lines += [markdown_table(rows, list(rows[0])), ""]
    lines += ["- Paper: the decay is polynomial in T − h for all models (a straight line on these "
              "axes).  Ours: the slopes above; see the figure for straightness.",
              f"- Paper: the angle at a fixed horizon grows as training proceeds.  Ours: 1 − cos θ_1 "
              f"grew from the first to the last measured epoch on {sum(grows)} of {len(grows)} models "
              f"— {_verdict(all(grows))}.", ""]

    lines += ["## Fig. E1 — memory against horizon", "", "![figE1](figE1.png)", ""]
    rows = []
    for key, m in results.items():
        a, b, r2 = memory_fit(m["memory"])
        rows.append({"model": key, "a [bytes/h]": a, "b [bytes]": b, "R²": r2,
                     "M(1)/M(T)": m["memory"][1] / m["memory"][m["T"]]})
    lines += [markdown_table(rows, list(rows[0])), "",
              "- Paper (eq. 11, App. E.1, eager mode): M(h) = a·h + b.  Ours, R² of the linear fit: "
              + ", ".join(f"{r['model']} {r['R²']:.4f} ({_verdict(r['R²'] > 0.98)})" for r in rows)
              + ".  (The paper notes that ResNet-50's memory is not linear either: stages differ in "
              "activation size, so the h blocks in the window cost different amounts.)", ""]

    lines += ["## Fig. E2 — training loss per horizon", "", "![figE2](figE2.png)", ""]
    rows, monotone, spreads = [], [], []
    for key, m in results.items():
        fixed = sorted((int(k[2:]), r) for k, r in m["runs"].items() if k.startswith("h="))
        finals = [r["final"] for _, r in fixed]
        pairs = list(zip(finals, finals[1:]))
        monotone.append(sum(b <= a for a, b in pairs) / max(len(pairs), 1))
        first = [r["curve"][0] for _, r in fixed]
        spreads.append((max(first) / min(first), max(finals) / min(finals)))
        rows.append({"model": key, **{f"h={h}": r["final"] for h, r in fixed},
                     **{name: m["runs"][name]["final"] for name in LOCO}})
    columns = ["model"] + sorted({c for r in rows for c in r if c.startswith("h=")}, key=lambda c: int(c[2:])) \
        + list(LOCO)
    lines += ["Final training loss J after the last epoch:", "", markdown_table(rows, columns), "",
              "- Paper (§5.2, App. E.2): larger horizons train better and converge to BP.  Ours: the final "
              "loss falls (or stays) from one trained horizon to the next larger in " + ", ".join(
                  f"{k} {100 * v:.0f}% of steps ({_verdict(v >= 0.7)})" for k, v in zip(results, monotone)) + ".",
              "- Paper: early epochs are aligned across horizons, later ones diverge.  Ours: max/min loss over "
              "horizons after the first epoch vs the last: " + ", ".join(
                  f"{k} {s0:.3g} → {s1:.3g}" for k, (s0, s1) in zip(results, spreads)) + " — "
              + _verdict(all(s1 > s0 for s0, s1 in spreads)) + ".", ""]

    lines += ["## Fig. 5 — horizon selection against the baselines", "", "![fig5](fig5.png)", ""]
    rows = []
    for name, col in fig5.items():
        row = {"column": name, "ĥ* (Ours)": col["selected_h"] if col["selection_feasible"] else f"{col['selected_h']} (infeasible)"}
        for a in BASELINES + [OURS]:
            v = col["values"][a]
            row[a] = "×" if v is None else f"{v:.3g} ({col['rel'][a]:.2f})"
        for a in DOUBLES:
            v = col["doubles"][a]
            row[a] = "×" if v is None else f"{v:.3g}"
        row["best fixed h"] = col["best_fixed_h"]
        row["its value"] = col["best_fixed_value"]
        rows.append(row)
    lines += ["Objective value (Rel in brackets; × = constraint violated; the LoCo double variants of "
              "eq. 20 are shown outside Rel); Ours trains with the ĥ* Algorithm 1 chose at "
              "initialisation from |H| = "
              f"{summary['config']['subset_size']} measured horizons:", "",
              markdown_table(rows, list(rows[0])), ""]
    averages = mean_rel(fig5)
    rows = [{"model": g, **averages[g]} for g in [*results, "all"]]
    lines += ["Mean Rel(a) (Fig. 5 bottom; lower is better):", "",
              markdown_table(rows, ["model"] + BASELINES + [OURS]), ""]
    avg = averages["all"]
    o1 = [c["rel"][OURS] for c in fig5.values() if c["objective"] == "constraint"]
    o2 = [c["rel"][OURS] for c in fig5.values() if c["objective"] == "weighted"]
    hardest = list(results)[-1]
    lines += [f"- Paper: selection beats BP.  Ours: mean Rel {avg[OURS]:.2f} vs BP {avg['BP']:.2f} — "
              f"{_verdict(avg[OURS] < avg['BP'])}.",
              f"- Paper: selection is more stable than FF.  Ours: FF {avg['FF']:.2f}, and infeasible in "
              f"{sum(c['values']['FF'] is None for c in fig5.values())} of {len(fig5)} columns vs Ours in "
              f"{sum(c['values'][OURS] is None for c in fig5.values())} — {_verdict(avg[OURS] < avg['FF'])}.",
              f"- Paper: comparable to LoCo on average.  Ours {avg[OURS]:.2f} vs LoCo3 {avg['LoCo3']:.2f}, "
              f"LoCo5 {avg['LoCo5']:.2f}.",
              f"- Paper: selection does best on the hardest task (ResNet-62).  Ours: mean Rel on {hardest} "
              f"{averages[hardest][OURS]:.2f} vs {', '.join(f'{k} {averages[k][OURS]:.2f}' for k in results if k != hardest)} — "
              f"{_verdict(all(averages[hardest][OURS] <= averages[k][OURS] for k in results))}.",
              f"- Paper: selection does worse under O1 than O2.  Ours: mean Rel O1 {np.mean(o1):.2f}, O2 "
              f"{np.mean(o2):.2f} — {_verdict(np.mean(o1) > np.mean(o2))}.", ""]

    lines += ["## Beyond the paper — re-selecting the horizon every "
              f"{summary['config']['schedule']['every']} epochs", "",
              "Cost of a schedule = epoch-average of C(M(h_e)) (pay-per-use).  Compared with the fixed "
              "ĥ* chosen at initialisation and with the best fixed horizon in hindsight (an oracle that "
              "trained every horizon):", ""]
    rows = []
    for key, m in results.items():
        for s in m["schedules"]:
            rows.append({"model": key, "column": column_name(s["objective"], s["cost"]),
                         "h per epoch": " ".join(map(str, s["horizons"])), "r": s["r"],
                         "schedule": s["value"], "fixed ĥ*": s["selected_value"],
                         "best fixed h": s["best_fixed_h"], "best fixed": s["best_fixed_value"]})
    lines += [markdown_table(rows, list(rows[0])), ""]
    wins = [r for r in rows if r["schedule"] is not None and r["best fixed"] is not None
            and r["schedule"] < r["best fixed"]]
    beats_selected = [r for r in rows if r["schedule"] is not None and
                      (r["fixed ĥ*"] is None or r["schedule"] < r["fixed ĥ*"])]
    lines += [f"- The schedule beat the best fixed horizon in {len(wins)} of {len(rows)} runs and the "
              f"fixed ĥ* in {len(beats_selected)} of {len(rows)}.", ""]

    th = summary["theory"]
    lines += ["## Theorem 3.4 — deep linear network", "",
              f"Fitted exponent of 1 − cos²θ_h against 1 − h/T (1 − h/T ∈ [0.03, 0.1], n = 10): depth-smooth "
              f"W̃(t) = A(t/T), T = 128: {th['smooth_T128']:.2f} ({th['smooth_T128_midpoint']:.2f} with the "
              f"midpoint correction); independent Gaussian W̃(t), T = 256, mean of 4 seeds: "
              f"{th['gaussian_T256']:.2f}.  Paper: 3.  Smooth {_verdict(2.5 <= th['smooth_T128'] <= 3.5)}; "
              "independent Gaussian perturbations add like a random walk and give 2 (see "
              "`recede.theory.deep_linear`).", ""]
    return "\n".join(lines)
