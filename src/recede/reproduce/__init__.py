"""``recede reproduce PAPER``: the papers' figures and tables, CPU scale by default.

Each paper module has ``run(out: Path, full: bool, progress: bool, data_root: str | None)
-> Path`` that writes JSON, PNG plots and a Markdown report under ``out`` and returns the
report's path.  ``data_root`` is a folder of the user's CIFAR data (nothing is downloaded);
``user_data(full, data_root) -> (dataset, options)`` names the dataset it gives, which is
loaded once before the run starts, so a wrong folder is refused before anything is written.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Iterator
from contextlib import contextmanager

import torch

PAPERS = {"paper-a": "recede.reproduce.paper_a", "paper-b": "recede.reproduce.paper_b"}


def add_reproduce_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="reproduce a paper's figures and tables")
    p.add_argument("paper", choices=sorted(PAPERS))
    p.add_argument("--full", action="store_true", help="the paper's settings instead of CPU scale")
    p.add_argument("--out", default=None, help="results folder (default results/PAPER)")
    p.add_argument("--data-root", default=None, metavar="DIR",
                   help="folder with cifar-10-batches-py (paper-a: M3 trains on CIFAR-10) or "
                        "cifar-100-python (paper-b --full); default: the offline stand-ins")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run_reproduce)


def run_reproduce(args: argparse.Namespace) -> int:
    from recede import preflight

    module = importlib.import_module(PAPERS[args.paper])
    if args.data_root is not None:
        preflight.load_data(*module.user_data(args.full, args.data_root))
    preflight.start(args)
    report = module.run(preflight.out_folder(args), full=args.full,
                        progress=not args.no_progress, data_root=args.data_root)
    print(f"report written to {report}")
    return 0


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
