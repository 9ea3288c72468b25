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


def demo_methods(T: int) -> list[str]:
    """BP, checkpointed BP, FF, horizons ⌈T/3⌉ and ⌈2T/3⌉, and BP-modified FF."""
    return ["bp", "ckpt", "ff", f"mpc:{-(-T // 3)}", f"mpc:{-(-2 * T // 3)}", "bpm-ff"]
