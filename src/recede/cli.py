"""The ``recede`` command line: train, compare, demo, bench, reproduce, pretrain (and select).

Every subcommand takes ``--config FILE.yaml`` (:mod:`recede.config`), checks everything it was
given before it writes anything (:mod:`recede.runs.preflight`), then starts the run: it writes its
resolved options to ``config.yaml`` in its ``--out`` folder and works.  Bad input ends with one
line naming the problem and exit status 2, never a traceback; a run that fails (a non-finite
loss, a rank that dies or hangs) ends with one line and status 1; an interrupt with 130.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import signal
import sys
from pathlib import Path

from recede.config import Parser, add_config_option, bound_options, int_range, parse_with_config, resolved, subcommands
from recede.core.engine import NonFiniteLossError
from recede.horizon.selection import add_select_parser
from recede.methods import MethodSpec
from recede.parallel import data_parallel as distributed
from recede.parallel.launch import launch, report_failure
from recede.parallel.pipeline import run as pipeline_run
from recede.reproduce import add_reproduce_parser
from recede.runs import preflight
from recede.runs.bench import add_bench_parser
from recede.runs.compare import add_compare_parser
from recede.runs.demo import add_demo_parser
from recede.runs.plots import loss_curves
from recede.runs.pretrain import add_pretrain_parser
from recede.runs.reports import machine, markdown_table, print_table, write_json
from recede.runs.run import Workload, add_workload_options, checkpoint_path, identity, run_method


def _resume_mode(text: str) -> str:
    if text != "auto":
        raise argparse.ArgumentTypeError(f"takes no value or 'auto', got {text!r}")
    return text


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model with one or more methods and compare them")
    add_workload_options(p)
    p.add_argument("--method", action="append", default=None,
                   help="bp, ff, mpc:H, loco:N, loco-double:N, ckpt[:S], or bpm-<local method> "
                        "(Paper B); repeat to compare (default: bp)")
    p.add_argument("--checkpoint-every", type=int_range(0), default=0, metavar="N",
                   help="also checkpoint every N steps (always at the end); 0: only at the end")
    p.add_argument("--resume", nargs="?", const=True, default=False, type=_resume_mode, metavar="auto",
                   help="continue the run in --out from its checkpoints (same options required); "
                        "--resume auto: resume if a checkpoint exists, else start afresh")
    p.add_argument("--tensorboard", action="store_true",
                   help="log to OUT/tensorboard (needs the tensorboard extra)")
    distributed.add_arguments(p)
    pipeline_run.add_arguments(p)
    p.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> int:
    if args.pipeline > 1:
        return pipeline_run.run_pipeline(args)
    specs = preflight.methods(args.method or ["bp"])
    workload = Workload.from_args(args)
    workload.check_methods(specs, args)
    if args.tensorboard:
        preflight.require_package("tensorboard", "--tensorboard", "tensorboard")
    out = Path(args.out)
    preflight.check_resume(out, identity(args), {checkpoint_path(out, s): s.label for s in specs},
                           args.resume, net=workload.build(args.seed) if args.resume else None)  # a build only to compare
    if args.nproc > 1 and not distributed.under_torchrun():
        return _launch(args, out, specs)
    ctx = distributed.init_from_env("gloo", args.dist_timeout)
    if args.nproc > 1 and args.nproc != ctx.world_size:
        raise ValueError(f"--nproc {args.nproc} but torchrun started {ctx.world_size} processes")
    workload = dataclasses.replace(workload, rank=ctx.rank, world_size=ctx.world_size)
    preflight.start(args)
    results = [run_method(workload, spec, args, out=out, checkpoint_every=args.checkpoint_every,
                          resume=bool(args.resume), tensorboard=args.tensorboard) for spec in specs]
    distributed.shutdown()
    if not ctx.is_main:
        return 0
    rows = [r.row() for r in results]
    columns = ["method", "train loss", "test loss"] + workload.metric_columns \
        + ["ms/step", "real MiB", "saved MiB", "state MiB"] + (["cuda peak MiB"] if workload.device.type == "cuda" else [])
    ranks = f", {ctx.world_size} ranks × batch {args.batch_size}" if ctx.world_size > 1 else ""
    title = f"{args.model} on {args.data}, {args.epochs} epochs{ranks}"
    print_table(rows, columns, title=title, report=out / "report.md",
                essential=["method", *(workload.metric_columns[:1] or ["test loss"]), "ms/step", "real MiB"])
    write_json(out / "metrics.json", {"rows": rows, "data": workload.task.info, "machine": machine(workload.device),
                                      "history": {r.label: [e.as_dict() for e in r.history] for r in results}})
    loss_curves({r.label: r.history for r in results}, out / "loss.png", title)
    (out / "report.md").write_text(
        f"# {title}\n\n{markdown_table(rows, columns)}\n\n"
        "ms/step is the mean wall time of a training step over the run (refreshes included); saved "
        "MiB is the peak of tensors saved for backward over a step and a refresh (recede.measure.memory); "
        "state MiB adds parameters, gradients, optimizer state and offsets.\n\n![loss curves](loss.png)\n")
    print(f"results written to {out}/")
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
        again = args.argv if "--resume" in args.argv else \
            [a for a in args.argv if a != "--overwrite"] + ["--resume"]
        raise distributed.RankFailure(
            f"{err}; the last good checkpoint{'s are' if len(kept) > 1 else ' is'} "
            f"{', '.join(map(str, kept))}; resume with: recede {shlex.join(again)}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="recede", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_parser(sub)
    add_compare_parser(sub)
    add_demo_parser(sub)
    add_bench_parser(sub)
    add_reproduce_parser(sub)
    add_select_parser(sub)
    add_pretrain_parser(sub)
    add_config_option(parser)
    preflight.add_overwrite_option(parser)
    bound_options(parser)  # every counter's range, stated once in recede.config.BOUNDS
    return parser


def _fail(command: str, kind: str, err: BaseException, status: int) -> int:
    message = " ".join(str(err).split()) or type(err).__name__
    report_failure(kind, err)  # for recede.parallel.launch, when this is one of its ranks
    print(f"{command}: {kind}: {message[:2000]}", file=sys.stderr)
    return status


def _check_environment() -> None:
    """The environment variables a run reads: a launcher's (:func:`recede.parallel.data_parallel.check_env`)
    and ``OMP_NUM_THREADS`` (an invalid value was taken out of the environment when recede was
    imported, before libgomp could warn about it; see ``recede/__init__.py``)."""
    from recede._environment import INVALID_OMP_NUM_THREADS

    if INVALID_OMP_NUM_THREADS is not None:
        raise ValueError(f"the environment variable OMP_NUM_THREADS="
                         f"{INVALID_OMP_NUM_THREADS[:40]!r} is not a positive integer; "
                         "unset it or give a number of threads")
    distributed.check_env()


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); return the exit status.

    Exit 2 (bad input) comes with one line and, when the run had started (``config.yaml``
    written, an earlier run moved aside by ``--overwrite``), puts the results folder back as
    it was (:func:`recede.runs.preflight.rollback`); so does a failed write or an interrupt before
    the first training step."""
    entry = argv is None
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    name = next((a for a in argv if a in subcommands(parser)), None)
    command = f"recede {name}" if name else "recede"  # for errors before the parse ends
    preflight.reset()  # nothing is pending from an earlier call in this process
    try:
        _check_environment()
        args = parse_with_config(parser, argv)
        args.argv = argv  # recede train --nproc N starts itself again in N processes
        args.resolved = resolved(parser, args)  # what preflight.start writes to config.yaml
        preflight.check_out(args)
        status = args.run(args)
        preflight.commit()
        return status
    except (ValueError, FileNotFoundError) as err:
        preflight.rollback()
        return _fail(command, "error", err, 2)
    except (NonFiniteLossError, distributed.RankFailure) as err:
        preflight.commit()
        return _fail(command, "stopped", err, 1)
    except OSError as err:  # before training: the input's fault (exit 2); after: a failed write
        if preflight.rollback():
            return _fail(command, "error", err, 2)
        return _fail(command, "failed", err, 1)
    except KeyboardInterrupt:
        preflight.rollback()
        report_failure("interrupted", None)
        print(f"{command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if entry:  # an interrupt while the interpreter ends still gets its line, not a traceback
            signal.signal(signal.SIGINT, _interrupted_at_exit(command))


def _interrupted_at_exit(command: str):
    def handler(signum, frame) -> None:
        os.write(2, f"{command}: interrupted\n".encode())
        os._exit(130)
    return handler


if __name__ == "__main__":
    sys.exit(main())
