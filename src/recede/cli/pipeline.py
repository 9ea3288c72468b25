"""``recede train --pipeline N``: the options, the checks before any rank starts, the launch
(:func:`recede.parallel.launch.launch`), and under torchrun each rank's :func:`recede.runs.run.run`
(its stage set up by :func:`recede.parallel.pipeline.run.stage_setup`)."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import uuid
from pathlib import Path

import torch.distributed as dist

from recede.cli.options import int_range
from recede.parallel import data_parallel as distributed
from recede.parallel.data_parallel import RankFailure
from recede.parallel.launch import launch
from recede.parallel.pipeline.run import RUN_ID, _check_stages, _identity, _stage_path, check_stages_agree
from recede.runs import preflight
from recede.runs.config import RunConfig
from recede.runs.run import Workload, check, identity, run


def add_pipeline_options(parser: argparse.ArgumentParser) -> None:
    """``--pipeline N`` and ``--micro-batches M`` for ``recede train``."""
    parser.add_argument(
        "--pipeline",
        type=int_range(1),
        default=1,
        metavar="N",
        help="split the model into N stages on N processes (torchrun, gloo) and "
        "train them as a receding-horizon pipeline; see docs/pipeline.md",
    )
    parser.add_argument(
        "--micro-batches",
        type=int_range(1),
        default=None,
        metavar="M",
        help="micro-batches per step with --pipeline (default 4·N)",
    )


def run_pipeline(args: argparse.Namespace) -> int:
    """``recede train --pipeline N``: check the input and launch (:func:`recede.parallel.launch.launch`),
    or (under torchrun) train this rank's stage."""
    specs = preflight.methods(args.method or ["bp"])
    for spec in specs:
        if spec.kind not in ("bp", "ff", "mpc") or spec.recompute:
            raise ValueError(f"--pipeline trains bp, ff, mpc:H and bpm-ff, bpm-mpc:H; not {spec.label}")
    if args.nproc > 1:
        raise ValueError("--pipeline and --nproc cannot be combined (one process per stage)")
    if args.tensorboard:
        raise ValueError("--tensorboard is not available with --pipeline")
    micro = args.micro_batches or 4 * args.pipeline
    if micro > args.batch_size:
        raise ValueError(
            f"--micro-batches {micro} is more than the batch of {args.batch_size} samples"
            + ("" if args.micro_batches else f" (the default is 4 · --pipeline {args.pipeline})")
        )
    out = Path(args.out)
    if not distributed.under_torchrun():
        workload = Workload.from_args(args)  # bad input: one line from here, before any rank starts
        _check_stages(workload.T, specs, args)
        paths = {_stage_path(out, s, r): s.label for s in specs for r in range(args.pipeline)}
        found = preflight.check_resume(out, identity(args) | {"pipeline": args.pipeline}, paths, args.resume)
        run_id = check_stages_agree(found, specs, args.pipeline, out, _identity(args, micro))
        os.environ[RUN_ID] = run_id or uuid.uuid4().hex
        try:
            return launch(args.argv, args.pipeline, args.dist_timeout)
        except RankFailure as err:
            kept = [path for path in paths if path.exists()]
            if not kept:
                raise RankFailure(f"{err}; no checkpoint was written") from None
            again = (
                args.argv if "--resume" in args.argv else [a for a in args.argv if a != "--overwrite"] + ["--resume"]
            )
            raise RankFailure(
                f"{err}; the stage checkpoints are in {out / 'checkpoints'}; resume with: recede {shlex.join(again)}"
            ) from None
    try:
        config = RunConfig.from_options(vars(args))
        run(config, checked=check(config), on_start=lambda: preflight.start(args))
    except (RankFailure, dist.DistError) as err:
        print(f"recede train: stopped: {str(err).splitlines()[0]}", file=sys.stderr)
        return 1
    return 0
