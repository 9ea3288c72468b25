"""``recede compare``: the memory–time–accuracy frontier of training methods on one workload.

Every method trains a fresh copy of the same model (same seed, same data order, same epochs
and optimizer), then is measured on the same batch:

* quality — final test loss, and test accuracy for classification (bits per byte, perplexity
  and tokens/s for a language model);
* time / BP — what a step costs as the user pays it (:mod:`recede.measure.usage`): the median wall
  time of ``backward`` (forward + gradient) over steps timed round-robin across the methods,
  plus for a BP-modified method one refresh (timed on its own) times the refreshes per step
  its run made (the run's history: refreshes / steps); beside it the ratio the layer-aware cost
  model predicts (:mod:`recede.measure.cost`, calibrated in the same rounds) and the run's own mean
  ms/step (optimizer steps and data loading included);
* memory / BP — the real peak of a step (and of a refresh): parameters, buffers and optimizer
  state plus the peak bytes the step allocates (:func:`recede.measure.memory.allocation_peak`: the
  profiler's allocation events on a CPU, the allocator's statistics on CUDA), so activations,
  gradients, backward temporaries, heads and recomputation all count; beside it, as a
  breakdown, the peak bytes saved for backward (``saved MiB``, :mod:`recede.measure.memory`'s meter),
  the gradients and optimizer state, and CUDA peak allocated bytes on a GPU;
* cos θ — ``⟨g, g_T⟩ / (‖g‖ ‖g_T‖)`` between the method's gradient and the true (BP) gradient
  over all block parameters, at the method's own trained weights, averaged over a few batches
  (SPEC §3, Paper A §3.3).

With ``--seeds N`` the whole comparison (training and measurement) runs for seeds
``--seed`` … ``--seed + N − 1``; every number of the table is then the mean ± sample sd over
those runs (a number without ± was the same in every run), and a method is *dominated* when
another is no worse on memory, time and quality and strictly better on one, in the means
(Pareto order: memory ↓, time ↓, quality ↑).  The table, the frontier plot (means, error bars
one sd) and the loss curves (mean over seeds) go to ``--out`` with ``metrics.json`` (the mean
rows, and each seed's rows and histories) and ``report.md``.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from typing import Any

import torch

from recede.core.engine import MPC
from recede.measure.cost import Meter, predicted_ratio
from recede.measure.fidelity import block_gradient_vector
from recede.measure.usage import paid_row, refreshes_per_step, time_methods
from recede.methods import MethodSpec
from recede.runs.config import RunConfig
from recede.runs.reports import fmt, mean_sd
from recede.runs.run import MethodResult, Workload
from recede.runs.train import EpochRecord, batches


def default_methods(T: int) -> list[str]:
    """BP, checkpointed BP, FF, LoCo3, three middle horizons and BP-modified FF."""
    names = ["bp", "ckpt", "ff", "loco:3"] if T >= 3 else ["bp", "ckpt", "ff"]
    names += [f"mpc:{h}" for h in sorted({max(2, round(T * q)) for q in (0.25, 0.5, 0.75)}) if h < T]
    return names + ["bpm-ff"]


def frontier_columns(metric_columns: Sequence[str], cuda: bool) -> list[str]:
    """Every column of the frontier table (report.md), in order."""
    return [
        "method",
        "train loss",
        "test loss",
        *metric_columns,
        "time ratio",
        "model ratio",
        "memory ratio",
        "real MiB",
        "saved MiB",
        "state MiB",
        *(["cuda peak MiB", "cuda ratio"] if cuda else []),
        "cos θ",
        "ms/step",
        "refresh ms",
        "run ms/step",
        "dominated",
    ]


def terminal_columns(columns: Sequence[str]) -> list[str]:
    """The frontier columns offered to the terminal (the report has them all), in order."""
    return [c for c in columns if c not in ("train loss", "refresh ms", "run ms/step", "state MiB")]


def essential_columns(metric_columns: Sequence[str]) -> list[str]:
    """The columns a terminal always shows: the method, its quality (accuracy, or an LM's bits
    per byte), time and memory (ratios to BP); the rest is shown as far as the width allows."""
    quality = [c for c in metric_columns if c in ("test acc", "test bits/byte")] or ["test loss"]
    return ["method", *quality, "time ratio", "memory ratio"]


def mean_rows(runs: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per method: every number the mean of its runs' values, with ``"<name> sd"``
    the sample sd where there are several runs (None where a run has no value)."""
    rows = []
    for per_seed in zip(*runs):
        row: dict[str, Any] = {"method": per_seed[0]["method"]}
        for key, value in per_seed[0].items():
            if key == "method" or key == "dominated":
                continue
            values = [r.get(key) for r in per_seed]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                row[key] = value if all(v == value for v in values) else None
                continue
            mean, sd = mean_sd(values)  # type: ignore[misc]  # numbers only: mean_sd returns a pair
            row[key] = value if all(v == value for v in values) else mean  # no rounding noise
            if len(per_seed) > 1:
                row[f"{key} sd"] = 0.0 if row[key] is value else sd
        rows.append(row)
    return rows


def spread_cells(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` for a table: ``mean ± sd`` where the runs differed, the value where they agreed."""
    return {
        key: f"{fmt(value)} ± {row[key + ' sd']:.2g}" if row.get(f"{key} sd") else value for key, value in row.items()
    }


def mean_histories(histories: Sequence[dict[str, list[EpochRecord]]]) -> dict[str, list[EpochRecord]]:
    """Per method, each epoch's training loss and test metrics averaged over the runs."""
    merged = {}
    for label in histories[0]:
        epochs = zip(*(h[label] for h in histories))
        merged[label] = [
            dataclasses.replace(
                records[0],
                train_loss=statistics.fmean(r.train_loss for r in records),
                test={k: statistics.fmean(r.test[k] for r in records) for k in records[0].test},
            )
            for records in epochs
        ]
    return merged


def measure_frontier(
    workload: Workload, specs: list[MethodSpec], results: list[MethodResult], config: RunConfig, timer: Meter
) -> list[dict[str, Any]]:
    """One row per method: quality, time and memory as paid (ratios to BP), the cost model's
    ratio and cos θ.  A BP-modified method's time carries its refreshes at the rate its
    run made them (``refreshes`` over the steps of its history); ``timer`` times the runs."""
    x, y = workload.batch(config.loop.batch_size)
    bp = next(i for i, s in enumerate(specs) if s.kind == "bp")
    rates = [refreshes_per_step(r.method, r.steps, r.refreshes) for r in results]
    times, costs = time_methods(
        [r.method for r in results], [r.net for r in results], x, y, rates, timer, results[bp].net
    )
    rows = []
    bp_memory = results[bp].memory
    for r, t in zip(results, times):
        assert r.memory is not None and bp_memory is not None  # measured by every run of a frontier
        row = r.row()
        row["run ms/step"] = row.pop("ms/step")
        row |= paid_row(t, r.memory, times[bp], bp_memory)
        row["refreshes"] = r.refreshes
        row["model ratio"] = predicted_ratio(costs, r.method)
        if r.tokens_per_step is not None:
            row["tokens/s"] = x.numel() / t.seconds
        row["cos θ"] = _gradient_cosine(r, workload, config.loop.batch_size, config.measure.cosine_batches)
        rows.append(row)
    return rows


def dominated(rows: list[dict[str, Any]], quality: str, higher_is_better: bool) -> list[bool]:
    """Pareto dominance on (memory ratio ↓, time ratio ↓, quality ↑ or ↓)."""
    sign = -1.0 if higher_is_better else 1.0

    def costs(row: dict[str, Any]) -> tuple[float, float, float]:
        return row["memory ratio"], row["time ratio"], sign * row[quality]

    flags = []
    for row in rows:
        mine = costs(row)
        flags.append(
            any(
                all(o <= m for o, m in zip(costs(other), mine)) and costs(other) != mine
                for other in rows
                if other is not row
            )
        )
    return flags


def _gradient_cosine(result: MethodResult, workload: Workload, batch_size: int, cosine_batches: int) -> float:
    """Mean over ``cosine_batches`` training batches of cos θ between the method's
    gradient and BP's, both flattened over every block parameter, at the trained weights."""
    net, method = result.net, result.method
    exact = MPC(net, net.T)
    total, count = 0.0, 0
    for x, y in batches(workload.task.train, batch_size):
        if count == cosine_batches:
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


def notes(rows: list[dict[str, Any]], quality: str, n_seeds: int) -> str:
    """What the frontier table's columns measure, and which methods are on the frontier."""
    beaten = [r["method"] for r in rows if r["dominated"] == "yes"]
    kept = [r["method"] for r in rows if r["dominated"] == "no"]
    seeds = (
        ""
        if n_seeds == 1
        else f"Every number is the mean ± sample sd over {n_seeds} runs (seeds), each trained and measured "
        "on its own; a number without ± was the same in every run. Dominance compares the means. "
    )
    return (
        f"{seeds}"
        "Ratios are to BP on the same batch. Time is what a step costs as paid: the median "
        "of timed steps (forward + gradient, round-robin across methods) plus, for "
        "BP-modified methods, one refresh (refresh ms) times the refreshes per step of the "
        "run; model ratio is the layer-aware cost model's prediction (recede.measure.cost); run "
        "ms/step is the run's own mean (optimizer steps and data loading included). Memory "
        "(memory ratio, real MiB) is the real peak of a step or a refresh: parameters, buffers, "
        "optimizer state and offsets plus the peak bytes the step allocated (activations, "
        "gradients, temporaries, recomputation); saved MiB, its activation part, is the peak "
        "of tensors saved for backward; state MiB adds parameters, gradients, optimizer state "
        "and offsets to it. cos θ is the cosine between "
        "each method's gradient and BP's over all block parameters, at the method's trained "
        "weights.\n\n"
        f"**On the frontier** (memory ↓, time ↓, {quality} "
        f"{'↑' if 'acc' in quality else '↓'}): {', '.join(kept)}.\n\n"
        f"**Dominated**: {', '.join(beaten) if beaten else 'none'}."
    )
