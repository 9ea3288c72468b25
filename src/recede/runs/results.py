"""The results folder, written one way: the table on the terminal, ``report.md`` (the table
in Markdown, the notes that say what each column measures, the figures), ``metrics.json``
(the rows, the machine, the data, and the training histories) and the figures (``loss.png``
for every training run, ``frontier.png`` for a comparison).

:func:`write_results` is the one writer; :func:`report_run` renders what
:func:`recede.runs.run.run` produced (a training table, or ``compare``'s frontier), and
``recede bench`` and the pipeline command call :func:`write_results` with their own rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recede.runs.plots import frontier, loss_curves
from recede.runs.reports import machine, markdown_table, print_table, write_json
from recede.runs.train import EpochRecord

if TYPE_CHECKING:
    from recede.runs.config import RunConfig
    from recede.runs.run import Workload

TRAIN_NOTES = (
    "ms/step is the mean wall time of a training step over the run (refreshes included); saved "
    "MiB is the peak of tensors saved for backward over a step and a refresh (recede.measure.memory); "
    "state MiB adds parameters, gradients, optimizer state and offsets."
)


def write_results(
    out: Path,
    *,
    title: str,
    heading: str,
    rows: Sequence[dict[str, Any]],
    columns: Sequence[str],
    notes: str,
    metrics: dict[str, Any],
    histories: Mapping[str, Sequence[EpochRecord]] | None = None,
    cells: Sequence[dict[str, Any]] | None = None,
    terminal: Sequence[str] | None = None,
    essential: Sequence[str] | None = None,
    quality: str | None = None,
) -> Path:
    """Print the table (``terminal`` columns, default ``columns``; ``essential`` ones always)
    and write ``out``: ``report.md`` (``# heading``, the table of ``cells`` — default ``rows``
    — and ``notes``), ``metrics.json`` (``metrics``, plus each history as plain values under
    ``"history"``), ``loss.png`` when there are ``histories``, ``frontier.png`` when ``quality``
    names the column the frontier plot ranks by.  Returns the report's path."""
    report = out / "report.md"
    print_table(rows, terminal or columns, title=title, essential=essential, report=report)
    figures = []
    if quality is not None:
        frontier(list(rows), out / "frontier.png", quality, title)
        figures.append("![frontier](frontier.png)")
    if histories is not None:
        loss_curves(histories, out / "loss.png", title)
        figures.append("![loss curves](loss.png)")
    write_json(out / "metrics.json", metrics)
    report.write_text(
        f"# {heading}\n\n{markdown_table(cells or rows, columns)}\n\n{notes}"
        + "".join(f"\n\n{figure}" for figure in figures)
        + "\n"
    )
    return report


def plain_histories(histories: Mapping[str, Sequence[EpochRecord]]) -> dict[str, list[dict[str, Any]]]:
    """Each method's epoch records as plain values (``metrics.json``)."""
    return {label: [e.as_dict() for e in history] for label, history in histories.items()}


def report_run(
    config: RunConfig, workload: Workload, runs: list[dict[str, Any]], world_size: int, out: Path | None
) -> tuple[list[dict[str, Any]], Path | None]:
    """The rows of a run (each seed's ``runs[i]["rows"]``, a mean over seeds for several) and,
    when ``out`` is given, its results folder; returns the rows and the report's path."""
    if config.measure.frontier:
        return _report_frontier(config, workload, runs, out)
    if config.parallel.pipeline > 1:
        from recede.parallel.pipeline.run import report as pipeline_report

        rows = runs[0]["rows"]
        histories = {r.label: r.history for r in runs[0]["results"]}
        return rows, None if out is None else pipeline_report(config, workload, rows, histories, out)
    rows = runs[0]["rows"] if len(runs) == 1 else _mean_rows(runs)
    if out is None:
        return rows, None
    w, lp = config.workload, config.loop
    columns = (
        ["method", "train loss", "test loss"]
        + workload.metric_columns
        + ["ms/step", "real MiB", "saved MiB", "state MiB"]
        + (["cuda peak MiB"] if workload.device.type == "cuda" else [])
    )
    ranks = f", {world_size} ranks × batch {lp.batch_size}" if world_size > 1 else ""
    title = f"{w.model} on {w.data}, {lp.epochs} epochs{ranks}"
    histories = {r.label: r.history for r in runs[0]["results"]}
    metrics: dict[str, Any] = {
        "rows": rows,
        "data": workload.task.info,
        "machine": machine(workload.device),
        "history": plain_histories(histories),
    }
    if len(runs) > 1:
        metrics |= _per_seed(runs)
    report = write_results(
        out,
        title=title,
        heading=title,
        rows=rows,
        columns=columns,
        notes=TRAIN_NOTES,
        metrics=metrics,
        histories=histories if len(runs) == 1 else _mean_histories(runs),
        essential=["method", *(workload.metric_columns[:1] or ["test loss"]), "ms/step", "real MiB"],
    )
    print(f"results written to {out}/")
    return rows, report


def _mean_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from recede.runs.compare import mean_rows

    return mean_rows([run["rows"] for run in runs])


def _mean_histories(runs: list[dict[str, Any]]) -> dict[str, list[EpochRecord]]:
    from recede.runs.compare import mean_histories

    return mean_histories([{r.label: r.history for r in run["results"]} for run in runs])


def _per_seed(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "seeds": [run["seed"] for run in runs],
        "runs": [
            {
                "seed": run["seed"],
                "rows": run["rows"],
                "history": plain_histories({r.label: r.history for r in run["results"]}),
            }
            for run in runs
        ],
    }


def _report_frontier(
    config: RunConfig, workload: Workload, runs: list[dict[str, Any]], out: Path | None
) -> tuple[list[dict[str, Any]], Path | None]:
    from recede.runs import compare

    rows = compare.mean_rows([run["rows"] for run in runs])
    for row, flag in zip(rows, compare.dominated(rows, workload.quality, higher_is_better=workload.classification)):
        row["dominated"] = "yes" if flag else "no"
    if out is None:
        return rows, None
    w, lp, seeds = config.workload, config.loop, config.seeds
    columns = compare.frontier_columns(workload.metric_columns, workload.device.type == "cuda")
    over = f", seed {seeds[0]}" if len(seeds) == 1 else f", mean ± sd over seeds {seeds[0]}–{seeds[-1]}"
    title = f"{w.model} on {w.data}, {lp.epochs} epochs, {config.measure.clock} clock{over}"
    report = write_results(
        out,
        title=title,
        heading=f"Frontier: {title}",
        rows=rows,
        columns=columns,
        cells=[compare.spread_cells(row) for row in rows],
        terminal=compare.terminal_columns(columns),
        essential=compare.essential_columns(workload.metric_columns),
        quality=workload.quality,
        notes=compare.notes(rows, workload.quality, len(seeds)),
        histories=_mean_histories(runs),
        metrics={
            "rows": rows,
            "seeds": seeds,
            "data": workload.task.info,
            "machine": machine(workload.device),
            "runs": _per_seed(runs)["runs"],
        },
    )
    return rows, report
