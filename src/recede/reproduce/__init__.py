"""``recede reproduce PAPER``: the papers' figures and tables, CPU scale by default, and the
robustness study of the BP-modified loss (``bpm-robustness``).

The command is :mod:`recede.cli.reproduce`.  Each paper module has ``run(out, full, progress, data_root,
config=None, weights=None,
on_checked=None) -> Path`` that checks its configuration, data folders and weights files,
calls ``on_checked()`` (the command line writes ``config.yaml`` there, :func:`recede.runs.preflight.start`),
then writes JSON, PNG plots and a Markdown report under ``out`` and returns the report's path.
A refused run therefore writes nothing.  A configuration is a preset of ``experiments/paper_a`` /
``paper_b`` (:mod:`recede.reproduce.configs`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

PAPERS = {
    "paper-a": "recede.reproduce.paper_a",
    "paper-b": "recede.reproduce.paper_b",
    "bpm-robustness": "recede.reproduce.bpm_robustness",
}


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch threads (``None``/0: unchanged), restoring the count after."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
