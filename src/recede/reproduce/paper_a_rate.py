"""Paper A Theorem C.8 measured: r(h) (eq. 14) against cos²θ_h, the r̂ of Algorithm 1.

For each workload of the config's ``rate`` section and each seed, every horizon trains by
full-batch gradient descent from the same start (:func:`recede.theory.decrease_rate.decrease_rates`)
with the theorem's estimator (g_h rescaled by eq. 13's c_h) and with plain g_h, as the
reproductions train.  r(h) is read after each τ of ``steps``; the predictions beside it are
cos²θ_h at the start (what Algorithm 1 measures) and cos²θ_h averaged over the run's first τ
steps (the μ of (62a) along the trajectory).  Agreement is reported as the mean and largest
|r(h) − cos²θ_h| over h < T and their correlation, mean ± sd over the seeds.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from recede import data, models
from recede.runs.plots import figure
from recede.runs.reports import markdown_table, mean_spread
from recede.theory.decrease_rate import HorizonRun, decrease_rates

ESTIMATORS = {"rescaled": True, "plain": False}


def check(label: str, workload: dict, steps: list[int]) -> None:
    """``ValueError`` naming ``label`` for a missing lr or bad step counts."""
    if not isinstance(workload.get("lr"), (int, float)) or workload["lr"] <= 0:
        raise ValueError(f"{label}: lr must be a positive number, got {workload.get('lr')!r}")
    if not steps or not all(isinstance(s, int) and s >= 1 for s in steps):
        raise ValueError(f"rate.steps must be a list of integers >= 1, got {steps!r}")


def run(config: dict, progress: bool) -> dict:
    """Every workload × seed × estimator of ``config["rate"]``."""
    section = config["rate"]
    tau = max(section["steps"])
    out = {}
    for key, workload in section["workloads"].items():
        started = time.perf_counter()
        task = data.load(workload["data"], **workload.get("data_options", {}))
        n = len(task.train)  # type: ignore[arg-type]  # torch's Dataset type has no __len__; ours all do
        x = torch.stack([task.train[i][0] for i in range(n)])
        y = torch.stack([torch.as_tensor(task.train[i][1]) for i in range(n)])
        per_seed = {}
        for seed in config["seeds"]:
            torch.manual_seed(seed)
            net = models.build(workload["model"], task, **workload.get("model_options", {}))
            horizons = list(range(1, net.T + 1))
            per_seed[seed] = {
                name: {
                    h: {"losses": r.losses, "cos": r.cos}
                    for h, r in decrease_rates(net, x, y, horizons, tau, workload["lr"], rescale).items()
                }
                for name, rescale in ESTIMATORS.items()
            }
            if progress:
                print(f"rate {key} seed {seed}: {time.perf_counter() - started:.0f} s")
        out[key] = {
            "workload": workload,
            "T": net.T,
            "n": len(x),
            "seeds": per_seed,
            "seconds": time.perf_counter() - started,
        }
    return {"steps": section["steps"], "workloads": out}


def _run(record: dict, h: int) -> HorizonRun:
    runs = record if h in record else {int(k): v for k, v in record.items()}
    return HorizonRun(h, runs[h]["losses"], runs[h]["cos"])


def table(model: dict, estimator: str, tau: int) -> list[dict]:
    """Per h: r(h) after τ steps, cos²θ_h at the start and along the run, per seed."""
    rows = []
    for h in range(1, model["T"] + 1):
        per = []
        for seed in model["seeds"].values():
            bp, run = _run(seed[estimator], model["T"]), _run(seed[estimator], h)
            per.append((run.rate(bp, tau), run.cos[0] ** 2, run.mean_cos2(tau)))
        rows.append(
            {"h": h, "r": [p[0] for p in per], "cos2_start": [p[1] for p in per], "cos2_run": [p[2] for p in per]}
        )
    return rows


def agreement(rows: list[dict], prediction: str) -> dict[str, list[float]]:
    """Per seed, over h < T: mean and largest |r − prediction| and their Pearson correlation."""
    inner = rows[:-1]
    n_seeds = len(inner[0]["r"])
    out: dict[str, list[float]] = {"mean_abs": [], "max_abs": [], "corr": []}
    for s in range(n_seeds):
        r = np.array([row["r"][s] for row in inner])
        p = np.array([row[prediction][s] for row in inner])
        out["mean_abs"].append(float(np.abs(r - p).mean()))
        out["max_abs"].append(float(np.abs(r - p).max()))
        out["corr"].append(float(np.corrcoef(r, p)[0, 1]) if r.std() > 0 and p.std() > 0 else float("nan"))
    return out


def plot(result: dict, out: Path) -> list[str]:
    keys = list(result["workloads"])
    with figure(out / "rate.png", len(ESTIMATORS), len(keys), figsize=(5 * len(keys), 7), squeeze=False) as (_, axes):
        for col, key in enumerate(keys):
            model = result["workloads"][key]
            for row, estimator in enumerate(ESTIMATORS):
                ax = axes[row][col]
                for tau in result["steps"]:
                    rows = table(model, estimator, tau)
                    ax.plot(
                        [r["h"] for r in rows], [np.mean(r["r"]) for r in rows], "o-", ms=3, label=f"r(h), τ = {tau}"
                    )
                rows = table(model, estimator, result["steps"][0])
                ax.plot(
                    [r["h"] for r in rows], [np.mean(r["cos2_start"]) for r in rows], "k--", label="cos²θ_h at start"
                )
                ax.set(title=f"{key}: {estimator} g_h", xlabel="h", ylabel="r(h) (mean over seeds)")
                ax.legend(fontsize=7)
    return ["rate.png"]


def render(result: dict, config: dict) -> list[str]:
    lines = [
        f"Full-batch gradient descent, seeds {', '.join(map(str, config['seeds']))}; mean ± sd over "
        "the seeds.  *Rescaled*: Theorem C.8's estimator c_h g_h (c_h = ⟨g_h, g_T⟩/‖g_h‖², eq. 13); "
        "*plain*: g_h as the reproductions train.  Agreement over h < T: mean and largest "
        "|r(h) − cos²θ_h| and the correlation of r(h) with cos²θ_h at the start.",
        "",
        "### Settings",
        "",
    ]
    rows = [
        {
            "workload": k,
            "model": m["workload"]["model"],
            "T": m["T"],
            "data": m["workload"]["data"],
            "samples (one batch)": m["n"],
            "lr": m["workload"]["lr"],
            "steps": max(result["steps"]),
            "minutes": m["seconds"] / 60,
        }
        for k, m in result["workloads"].items()
    ]
    lines += [markdown_table(rows, list(rows[0])), "", "![rate](rate.png)", "", "### Agreement", ""]
    rows = []
    for key, model in result["workloads"].items():
        for estimator in ESTIMATORS:
            for tau in result["steps"]:
                t = table(model, estimator, tau)
                start, along = agreement(t, "cos2_start"), agreement(t, "cos2_run")
                rows.append(
                    {
                        "workload": key,
                        "g": estimator,
                        "τ": tau,
                        "mean |r − cos²₀|": mean_spread(start["mean_abs"], 2),
                        "max |r − cos²₀|": mean_spread(start["max_abs"], 2),
                        "corr(r, cos²₀)": mean_spread(start["corr"], 2),
                        "mean |r − mean cos²|": mean_spread(along["mean_abs"], 2),
                    }
                )
    lines += [markdown_table(rows, list(rows[0])), ""]
    for key, model in result["workloads"].items():
        tau = result["steps"][-1]
        last = {e: table(model, e, tau) for e in ESTIMATORS}
        first = {e: table(model, e, result["steps"][0]) for e in ESTIMATORS}
        detail = [
            {
                "h": r["h"],
                "cos²θ_h at start": mean_spread(r["cos2_start"]),
                f"r, rescaled, τ = {result['steps'][0]}": mean_spread(f["r"]),
                f"r, rescaled, τ = {tau}": mean_spread(r["r"]),
                f"mean cos², rescaled run, τ = {tau}": mean_spread(r["cos2_run"]),
                f"r, plain, τ = {tau}": mean_spread(p["r"]),
            }
            for r, f, p in zip(last["rescaled"], first["rescaled"], last["plain"])
        ]
        lines += [f"**{key}** per horizon:", "", markdown_table(detail, list(detail[0])), ""]
    return lines


def entries(config: dict) -> dict[str, dict]:
    """The model/data entries of the section, by label, for :mod:`recede.reproduce.configs`."""
    return {f"rate.{k}": v for k, v in config.get("rate", {}).get("workloads", {}).items()}
