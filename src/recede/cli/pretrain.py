"""``recede pretrain``: its options and the front-end over :func:`recede.runs.pretrain.pretrain`."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from recede.cli.options import float_range, int_range, positive_float
from recede.runs.pretrain import PRESETS, content_hash, pretrain, settings


def add_pretrain_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain", help="write a pretrained source checkpoint (safetensors + JSON), cached by a hash of its settings"
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="a source checkpoint of docs/finetune.md; flags given beside it win",
    )
    p.add_argument("--model", default=None, help="a registry model (recede train --help lists them)")
    p.add_argument("--model-opt", action="append", default=None, metavar="KEY=VALUE")
    p.add_argument("--data", default=None, help="the source dataset")
    p.add_argument("--data-opt", action="append", default=None, metavar="KEY=VALUE")
    p.add_argument("--epochs", type=int_range(1), default=None)
    p.add_argument("--batch-size", type=int_range(1), default=None)
    p.add_argument("--optimizer", choices=["sgd", "adam"], default=None)
    p.add_argument("--lr", type=positive_float, default=None)
    p.add_argument("--momentum", type=float_range(0.0, 1.0, high_open=True), default=None)
    p.add_argument("--seed", type=int_range(0), default=0)
    p.add_argument(
        "--threads",
        type=int_range(0),
        default=0,
        help="CPU threads for torch (0: torch's default); the bytes written can depend on it",
    )
    p.add_argument("--out", default="results/pretrained", help="the folder of checkpoints (a cache)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=run_pretrain)


def run_pretrain(args: argparse.Namespace) -> int:
    """``recede pretrain``: check, then write (or reuse) one checkpoint and say which."""
    if args.threads:
        torch.set_num_threads(args.threads)
    values = settings(args)
    started = time.perf_counter()
    path, reused = pretrain(
        values, Path(args.out), progress=not args.no_progress, reuse=not getattr(args, "overwrite", False)
    )
    if reused:
        print(f"reusing {path} (cached: same settings, hash {content_hash(values)[:16]}; no training)")
    else:
        print(
            f"wrote {path} and {path.with_suffix('.json').name} (pretrained in {time.perf_counter() - started:.1f} s)"
        )
    return 0
