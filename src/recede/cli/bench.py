"""``recede bench``: its options and the front-end over :func:`recede.runs.bench.bench`."""

from __future__ import annotations

import argparse

from recede.cli.options import add_workload_options, int_range
from recede.measure.usage import CLOCKS, meter
from recede.runs import preflight
from recede.runs.bench import bench
from recede.runs.config import RunConfig
from recede.runs.run import check


def add_bench_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="time and memory of one step per method (no training)")
    add_workload_options(p, out="results/bench")
    p.add_argument("--methods", nargs="+", default=["bp", "ckpt", "ff", "mpc:2", "mpc:4"], metavar="METHOD")
    p.add_argument("--repeats", type=int_range(1), default=10, help="timed steps per method")
    p.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="time in wall seconds, or in this process's CPU seconds (steady on a shared CPU)",
    )
    p.set_defaults(run=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    """``recede bench``: the options as a :class:`~recede.runs.config.RunConfig`, checked
    (:func:`recede.runs.run.check`: the workload built once), then :func:`bench`."""
    checked = check(RunConfig.from_options(vars(args)))
    timer = meter(args.repeats, 2, checked.workload.device, args.clock)  # a clock unfit for the device fails now
    preflight.start(args)
    bench(checked, timer)
    return 0
