"""``recede train``: its options, and the front-end that turns them into a
:class:`~recede.runs.config.RunConfig` and calls :func:`recede.runs.run.run` (or launches the
``--nproc`` ranks, or the ``--pipeline``)."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from recede.cli.options import add_workload_options, float_range, int_range
from recede.cli.pipeline import add_pipeline_options, run_pipeline
from recede.methods import MethodSpec
from recede.parallel import data_parallel as distributed
from recede.parallel.data_parallel import DEFAULT_TIMEOUT_S, MAX_TIMEOUT_S
from recede.parallel.launch import launch
from recede.runs import preflight
from recede.runs.config import RunConfig
from recede.runs.run import check, checkpoint_path, run


def _resume_mode(text: str) -> str:
    if text != "auto":
        raise argparse.ArgumentTypeError(f"takes no value or 'auto', got {text!r}")
    return text


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model with one or more methods and compare them")
    add_workload_options(p)
    p.add_argument(
        "--method",
        action="append",
        default=None,
        help="bp, ff, mpc:H, loco:N, loco-double:N, ckpt[:S], sac[:S], or bpm-<local method> "
        "(Paper B); repeat to compare (default: bp)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=int_range(0),
        default=0,
        metavar="N",
        help="also checkpoint every N steps (always at the end); 0: only at the end",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        type=_resume_mode,
        metavar="auto",
        help="continue the run in --out from its checkpoints (same options required); "
        "--resume auto: resume if a checkpoint exists, else start afresh",
    )
    p.add_argument("--tensorboard", action="store_true", help="log to OUT/tensorboard (needs the tensorboard extra)")
    add_nproc_options(p)
    add_pipeline_options(p)
    p.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> int:
    """``recede train``: the options as a :class:`~recede.runs.config.RunConfig`, checked
    (:func:`recede.runs.run.check`), then run (:func:`recede.runs.run.run`) in this process,
    in ``--nproc`` data-parallel ranks, or as a ``--pipeline``."""
    if args.pipeline > 1:
        return run_pipeline(args)
    config = RunConfig.from_options(vars(args))
    checked = check(config)
    if args.nproc > 1 and not distributed.under_torchrun():
        return _launch(args, Path(args.out), checked.specs)
    run(config, checked=checked, on_start=lambda: preflight.start(args))
    return 0


def _launch(args: argparse.Namespace, out: Path, specs: list[MethodSpec]) -> int:
    """``recede train --nproc N``: run the ranks (:func:`recede.parallel.launch.launch`); when one
    fails, say which checkpoints are left and the command that resumes from them."""
    try:
        return launch(args.argv, args.nproc, args.dist_timeout)
    except distributed.RankFailure as err:
        kept = [path for path in (checkpoint_path(out, s) for s in specs) if path.exists()]
        if not kept:
            raise distributed.RankFailure(f"{err}; no checkpoint was written") from None
        again = args.argv if "--resume" in args.argv else [a for a in args.argv if a != "--overwrite"] + ["--resume"]
        raise distributed.RankFailure(
            f"{err}; the last good checkpoint{'s are' if len(kept) > 1 else ' is'} "
            f"{', '.join(map(str, kept))}; resume with: recede {shlex.join(again)}"
        ) from None


def add_nproc_options(parser: argparse.ArgumentParser) -> None:
    """``--nproc`` and ``--dist-timeout`` for a subcommand that trains data-parallel."""
    parser.add_argument(
        "--nproc",
        type=int_range(1),
        default=1,
        help="data-parallel processes on this machine (gloo; recede.parallel.launch starts "
        "and watches them); --batch-size is per process. See docs/distributed.md",
    )
    parser.add_argument(
        "--dist-timeout",
        type=float_range(1e-3, MAX_TIMEOUT_S),
        default=DEFAULT_TIMEOUT_S,
        help="seconds a rank waits for the others in a collective before failing (0.001 to 604800, a week)",
    )
