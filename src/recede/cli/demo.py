"""``recede demo``: ``compare``'s front-end with the demo's workload and methods
(:mod:`recede.runs.demo`)."""

from __future__ import annotations

import argparse

from recede.cli.compare import compare
from recede.cli.options import add_compare_options, add_workload_options
from recede.runs.demo import demo_methods


def add_demo_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="BP vs checkpointed BP vs FF vs two horizons vs BP-modified "
        "FF on a small workload (a few minutes, offline)",
    )
    add_workload_options(p, model="resnet62", data_name="digits", epochs=8, batch_size=32, lr=0.01, out="results/demo")
    p.set_defaults(
        model_opt=["widths=[8, 16, 32]", "blocks_per_stage=3", "in_channels=1"],
        data_opt=["size=8", "channels=1"],
        momentum=0.9,
        threads=1,
        bpm_period=14,
        bpm_samples=160,
    )
    add_compare_options(p, "bp ckpt ff, mpc at ⌈T/3⌉ and ⌈2T/3⌉")
    p.set_defaults(clock="cpu", seeds=3, run=run_demo)  # one thread: CPU seconds, steady on a shared machine


def run_demo(args: argparse.Namespace) -> int:
    report = compare(args, demo_methods)
    print(f"report written to {report}")
    return 0
