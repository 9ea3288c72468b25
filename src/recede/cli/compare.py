"""``recede compare``: its options and the front-end over :func:`recede.runs.run.run` with the
frontier measurement (:mod:`recede.runs.compare`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from recede.cli.options import add_compare_options, add_workload_options
from recede.runs import preflight
from recede.runs.compare import default_methods
from recede.runs.config import RunConfig
from recede.runs.run import run


def add_compare_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="BP, checkpointed BP, FF, LoCo, horizons, BP-modified: one table and plot of memory, time and accuracy",
    )
    add_workload_options(p, epochs=3, out="results/compare")
    add_compare_options(p, "bp ckpt ff loco:3, mpc at T/4, T/2, 3T/4")
    p.set_defaults(run=run_compare)


def run_compare(args: argparse.Namespace) -> int:
    report = compare(args)
    print(f"report written to {report}")
    return 0


def compare(args: argparse.Namespace, defaults: Callable[[int], list[str]] = default_methods) -> Path:
    """Train and measure every method (``args.methods``, else ``defaults(T)``) by
    :func:`recede.runs.run.run` with the frontier measurement; return the report's path."""
    config = RunConfig.from_options(vars(args) | {"frontier": True})
    result = run(config, default_methods=defaults, on_start=lambda: preflight.start(args))
    assert result.report is not None
    return result.report
