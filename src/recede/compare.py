"""``recede compare``: the memory–time–accuracy frontier of training methods on one workload.

Every method trains a fresh copy of the same model (same seed, same data order, same epochs
and optimizer), then is measured on the same batch:

* quality — final test loss, and test accuracy for classification (bits per byte, perplexity
  and tokens/s for a language model);
* time / BP — what a step costs as the user pays it (:mod:`recede.usage`): the median wall
  time of ``backward`` (forward + gradient) over steps timed round-robin across the methods,
  plus for a BP-modified method one refresh (timed on its own) times the refreshes per step
  its run made (the run's history: refreshes / steps); beside it the ratio the layer-aware cost
  model predicts (:mod:`recede.cost`, calibrated in the same rounds) and the run's own mean
  ms/step (optimizer steps and data loading included);
* memory / BP — peak bytes saved for backward over a step and a refresh (:mod:`recede.memory`),
  the whole training state (parameters, gradients, optimizer state, offsets, saved
  activations), and CUDA peak allocated bytes on a GPU;
* cos θ — ``⟨g, g_T⟩ / (‖g‖ ‖g_T‖)`` between the method's gradient and the true (BP) gradient
  over all block parameters, at the method's own trained weights, averaged over a few batches
  (SPEC §3, Paper A §3.3).

A method is *dominated* when another is no worse on memory, time and quality and strictly
better on one (Pareto order: memory ↓, time ↓, quality ↑).  The table, the frontier plot and
the loss curves go to ``--out`` with ``metrics.json`` and ``report.md``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from recede import preflight
from recede.config import int_range
from recede.cost import Meter, predicted_ratio
from recede.engine import MPC
from recede.fidelity import block_gradient_vector
from recede.methods import MethodSpec, parse_method
from recede.plots import frontier, loss_curves
from recede.reports import machine, markdown_table, print_table, write_json
from recede.run import MethodResult, Workload, add_workload_options, run_method
from recede.train import batches
from recede.usage import CLOCKS, meter, paid_row, refreshes_per_step, time_methods


def add_compare_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="BP, checkpointed BP, FF, LoCo, horizons, BP-modified: "
                                       "one table and plot of memory, time and accuracy")
    add_workload_options(p, epochs=3, out="results/compare")
    add_compare_options(p, "bp ckpt ff loco:3, mpc at T/4, T/2, 3T/4")
    p.set_defaults(run=run_compare)


def add_compare_options(p: argparse.ArgumentParser, defaults: str) -> None:
    """The options of the measurement that ``compare`` and ``demo`` share."""
    p.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                   help=f"methods to compare (default: {defaults}, bpm-ff)")
    p.add_argument("--timing-steps", type=int_range(1), default=10,
                   help="steps (and refreshes) timed per method (the median is reported)")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="time in wall seconds, or in this process's CPU seconds (steady on a shared CPU)")
    p.add_argument("--cosine-batches", type=int_range(1), default=4,
                   help="batches over which cos θ to the BP gradient is averaged")


def default_methods(T: int) -> list[str]:
    """BP, checkpointed BP, FF, LoCo3, three middle horizons and BP-modified FF."""
    names = ["bp", "ckpt", "ff", "loco:3"] if T >= 3 else ["bp", "ckpt", "ff"]
    names += [f"mpc:{h}" for h in sorted({max(2, round(T * q)) for q in (0.25, 0.5, 0.75)}) if h < T]
    return names + ["bpm-ff"]


def run_compare(args: argparse.Namespace) -> int:
    report = compare(args)
    print(f"report written to {report}")
    return 0


def compare(args: argparse.Namespace, defaults: Callable[[int], list[str]] = default_methods) -> Path:
    """Train and measure every method (``args.methods``, else ``defaults(T)``); write the
    table, plots, JSON and report to ``args.out``; return the report's path."""
    workload = Workload.from_args(args)
    T = workload.build(args.seed).T
    specs = preflight.methods(args.methods or defaults(T))
    if not any(s.kind == "bp" for s in specs):
        specs.insert(0, parse_method("bp"))  # every ratio is to BP
    workload.check_methods(specs, args)
    timer = meter(args.timing_steps, 1, workload.device, args.clock)  # a clock unfit for the device fails now
    preflight.start(args)
    out = Path(args.out)
    results = [run_method(workload, spec, args, out=out) for spec in specs]
    rows = measure_frontier(workload, specs, results, args, timer)
    quality = workload.quality
    columns = ["method", "train loss", "test loss"] + workload.metric_columns \
        + ["time ratio", "model ratio", "memory ratio", "state MiB"] \
        + (["cuda peak MiB", "cuda ratio"] if workload.device.type == "cuda" else []) \
        + ["cos θ", "ms/step", "refresh ms", "run ms/step", "saved MiB", "dominated"]
    title = f"{args.model} on {args.data}, {args.epochs} epochs, {args.clock} clock"
    print_table(rows, [c for c in columns if c not in ("train loss", "refresh ms", "run ms/step", "saved MiB")],
                title=title)
    frontier(rows, out / "frontier.png", quality, title)
    loss_curves({r.label: r.history for r in results}, out / "loss.png", title)
    write_json(out / "metrics.json", {"rows": rows, "data": workload.task.info, "machine": machine(workload.device),
                                      "history": {r.label: [e.as_dict() for e in r.history] for r in results}})
    report = out / "report.md"
    report.write_text(_report(title, rows, columns, quality))
    return report


def measure_frontier(workload: Workload, specs: list[MethodSpec], results: list[MethodResult],
                     args: argparse.Namespace, timer: Meter) -> list[dict[str, Any]]:
    """One row per method: quality, time and memory as paid (ratios to BP), the cost model's
    ratio, cos θ, dominance.  A BP-modified method's time carries its refreshes at the rate its
    run made them (``refreshes`` over the steps of its history); ``timer`` times the runs."""
    x, y = workload.batch(args.batch_size)
    bp = next(i for i, s in enumerate(specs) if s.kind == "bp")
    rates = [refreshes_per_step(r.method, r.steps, r.refreshes) for r in results]
    times, costs = time_methods([r.method for r in results], [r.net for r in results], x, y, rates, timer,
                                results[bp].net)
    rows = []
    for r, t in zip(results, times):
        row = r.row()
        row["run ms/step"] = row.pop("ms/step")
        row |= paid_row(t, r.memory, times[bp], results[bp].memory)
        row["refreshes"] = r.refreshes
        row["model ratio"] = predicted_ratio(costs, r.method)
        if r.tokens_per_step is not None:
            row["tokens/s"] = x.numel() / t.seconds
        row["cos θ"] = _gradient_cosine(r, workload, args)
        rows.append(row)
    for row, flag in zip(rows, dominated(rows, workload.quality, higher_is_better=workload.classification)):
        row["dominated"] = "yes" if flag else "no"
    return rows


def dominated(rows: list[dict[str, Any]], quality: str, higher_is_better: bool) -> list[bool]:
    """Pareto dominance on (memory ratio ↓, time ratio ↓, quality ↑ or ↓)."""
    sign = -1.0 if higher_is_better else 1.0

    def costs(row: dict[str, Any]) -> tuple[float, float, float]:
        return row["memory ratio"], row["time ratio"], sign * row[quality]

    flags = []
    for row in rows:
        mine = costs(row)
        flags.append(any(all(o <= m for o, m in zip(costs(other), mine)) and costs(other) != mine
                         for other in rows if other is not row))
    return flags


def _gradient_cosine(result: MethodResult, workload: Workload, args: argparse.Namespace) -> float:
    """Mean over ``args.cosine_batches`` training batches of cos θ between the method's
    gradient and BP's, both flattened over every block parameter, at the trained weights."""
    net, method = result.net, result.method
    exact = MPC(net, net.T)
    total, count = 0.0, 0
    for x, y in batches(workload.task.train, args.batch_size):
        if count == args.cosine_batches:
            break
        x, y = x.to(workload.device), y.to(workload.device)
        g_method, g_exact = (_flat_gradient(m, net, x, y) for m in (method, exact))
        total += float(torch.nn.functional.cosine_similarity(g_method, g_exact, dim=0))
        count += 1
    net.zero_grad(set_to_none=True)
    return total / count


def _flat_gradient(method, net, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    net.zero_grad(set_to_none=True)
    method.backward(x, y)
    return block_gradient_vector(net)


def _report(title: str, rows: list[dict[str, Any]], columns: list[str], quality: str) -> str:
    beaten = [r["method"] for r in rows if r["dominated"] == "yes"]
    kept = [r["method"] for r in rows if r["dominated"] == "no"]
    return (f"# Frontier: {title}\n\n{markdown_table(rows, columns)}\n\n"
            "Ratios are to BP on the same batch. Time is what a step costs as paid: the median "
            "of timed steps (forward + gradient, round-robin across methods) plus, for "
            "BP-modified methods, one refresh (refresh ms) times the refreshes per step of the "
            "run; model ratio is the layer-aware cost model's prediction (recede.cost); run "
            "ms/step is the run's own mean (optimizer steps and data loading included). Memory "
            "is the peak of tensors saved for backward over a step and a refresh; state MiB adds "
            "parameters, gradients, optimizer state and offsets. cos θ is the cosine between "
            "each method's gradient and BP's over all block parameters, at the method's trained "
            "weights.\n\n"
            f"**On the frontier** (memory ↓, time ↓, {quality} "
            f"{'↑' if 'acc' in quality else '↓'}): {', '.join(kept)}.\n\n"
            f"**Dominated**: {', '.join(beaten) if beaten else 'none'}.\n\n"
            "![frontier](frontier.png)\n\n![loss curves](loss.png)\n")
