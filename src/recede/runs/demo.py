"""``recede demo``: the whole story on one small workload in a few minutes on a laptop CPU.

Trains a ResNet-62-shaped network cut to 3 stages × 3 blocks (8/16/32 channels, T = 9) on
scikit-learn's bundled 8×8 digits with BP, BP with activation checkpointing, FF (h = 1), two
middle horizons, and BP-modified FF (Paper B; an offset refreshed every 14 steps from 160
samples in micro-batches of 8 — the CPU-scale settings of ``recede reproduce paper-b``), for
three seeds, then writes the ``compare`` table (mean ± sd over the seeds), frontier plot and
loss curves to ``--out``: time as paid (the BP-modified method's refreshes included), memory
over step and refresh, the training state, and the layer-aware cost model's ratios.  Offline:
the digits ship with scikit-learn.
"""

from __future__ import annotations

import argparse

from recede.runs.compare import add_compare_options, compare
from recede.runs.run import add_workload_options


def add_demo_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="BP vs checkpointed BP vs FF vs two horizons vs BP-modified "
                                    "FF on a small workload (a few minutes, offline)")
    add_workload_options(p, model="resnet62", data_name="digits", epochs=8, batch_size=32, lr=0.01,
                         out="results/demo")
    p.set_defaults(model_opt=["widths=[8, 16, 32]", "blocks_per_stage=3", "in_channels=1"],
                   data_opt=["size=8", "channels=1"], momentum=0.9, threads=1,
                   bpm_period=14, bpm_samples=160)
    add_compare_options(p, "bp ckpt ff, mpc at ⌈T/3⌉ and ⌈2T/3⌉")
    p.set_defaults(clock="cpu", seeds=3, run=run_demo)  # one thread: CPU seconds, steady on a shared machine


def demo_methods(T: int) -> list[str]:
    """BP, checkpointed BP, FF, horizons ⌈T/3⌉ and ⌈2T/3⌉, and BP-modified FF."""
    return ["bp", "ckpt", "ff", f"mpc:{-(-T // 3)}", f"mpc:{-(-2 * T // 3)}", "bpm-ff"]


def run_demo(args: argparse.Namespace) -> int:
    report = compare(args, demo_methods)
    print(f"report written to {report}")
    return 0
