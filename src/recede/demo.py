"""``recede demo``: the whole story on one small workload in a few minutes on a laptop CPU.

Trains Paper A's M2 residual MLP (15 blocks) on its trigonometric regression data (Paper A
App. D, a smaller sample) with BP, BP with activation checkpointing, FF (h = 1), two middle
horizons, and BP-modified FF (Paper B), then writes the
``compare`` table, frontier plot and loss curves to ``--out``.  Offline: the data is synthetic.
"""

from __future__ import annotations

import argparse

from recede.compare import add_compare_options, compare
from recede.run import add_workload_options


def add_demo_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="BP vs checkpointed BP vs FF vs two horizons vs BP-modified "
                                    "FF on a small workload (a few minutes, offline)")
    add_workload_options(p, model="resmlp", data_name="trig", epochs=6, batch_size=50, lr=0.05,
                         out="results/demo")
    p.set_defaults(data_opt=["n=5000", "n_test=1000"], threads=1)
    add_compare_options(p, "bp ckpt ff, mpc at ⌈T/3⌉ and ⌈2T/3⌉")
    p.set_defaults(run=run_demo)


def demo_methods(T: int) -> list[str]:
    """BP, checkpointed BP, FF, horizons ⌈T/3⌉ and ⌈2T/3⌉, and BP-modified FF."""
    return ["bp", "ckpt", "ff", f"mpc:{-(-T // 3)}", f"mpc:{-(-2 * T // 3)}", "bpm-ff"]


def run_demo(args: argparse.Namespace) -> int:
    report = compare(args, demo_methods)
    print(f"report written to {report}")
    return 0
