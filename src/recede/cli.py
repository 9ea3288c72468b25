"""The ``recede`` command line: train, compare, demo, bench, reproduce (and select).

Every subcommand takes ``--config FILE.yaml`` (:mod:`recede.config`) and writes its resolved
options to ``config.yaml`` in its ``--out`` folder.  Bad input ends with one line naming the
problem and exit status 2, never a traceback; a non-finite loss ends with status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from recede import distributed
from recede.bench import add_bench_parser
from recede.compare import add_compare_parser
from recede.config import add_config_option, int_range, parse_with_config, save_resolved
from recede.demo import add_demo_parser
from recede.engine import NonFiniteLossError
from recede.methods import parse_method
from recede.pipeline import run as pipeline_run
from recede.plots import loss_curves
from recede.reports import markdown_table, print_table, write_json
from recede.reproduce import add_reproduce_parser
from recede.run import Workload, add_workload_options, run_method
from recede.selection import add_select_parser


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model with one or more methods and compare them")
    add_workload_options(p)
    p.add_argument("--method", action="append", default=None,
                   help="bp, ff, mpc:H, loco:N, loco-double:N, ckpt[:S], or bpm-<local method> "
                        "(Paper B); repeat to compare (default: bp)")
    p.add_argument("--checkpoint-every", type=int_range(0), default=0, metavar="N",
                   help="also checkpoint every N steps (always at the end); 0: only at the end")
    p.add_argument("--resume", action="store_true",
                   help="continue from the checkpoints in --out (same options required)")
    p.add_argument("--tensorboard", action="store_true",
                   help="log to OUT/tensorboard (needs the tensorboard extra)")
    distributed.add_arguments(p)
    pipeline_run.add_arguments(p)
    p.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> int:
    if args.pipeline > 1:
        return pipeline_run.run_pipeline(args)
    if args.nproc > 1 and not distributed.under_torchrun():
        return distributed.launch(args.argv, args.nproc)
    specs = [parse_method(m) for m in (args.method or ["bp"])]
    ctx = distributed.init_from_env("gloo", args.dist_timeout)
    if args.nproc > 1 and args.nproc != ctx.world_size:
        raise ValueError(f"--nproc {args.nproc} but torchrun started {ctx.world_size} processes")
    workload = Workload.from_args(args, rank=ctx.rank, world_size=ctx.world_size)
    workload.check_methods(specs, args)
    out = Path(args.out)
    results = [run_method(workload, spec, args, out=out, checkpoint_every=args.checkpoint_every,
                          resume=args.resume, tensorboard=args.tensorboard) for spec in specs]
    distributed.shutdown()
    if not ctx.is_main:
        return 0
    rows = [r.row() for r in results]
    columns = ["method", "train loss", "test loss"] + workload.metric_columns \
        + ["ms/step", "saved MiB"] + (["cuda peak MiB"] if workload.device.type == "cuda" else [])
    ranks = f", {ctx.world_size} ranks × batch {args.batch_size}" if ctx.world_size > 1 else ""
    title = f"{args.model} on {args.data}, {args.epochs} epochs{ranks}"
    print_table(rows, columns, title=title)
    write_json(out / "metrics.json", {"rows": rows, "data": workload.task.info, "history": {
        r.label: [e.as_dict() for e in r.history] for r in results}})
    loss_curves({r.label: r.history for r in results}, out / "loss.png", title)
    (out / "report.md").write_text(
        f"# {title}\n\n{markdown_table(rows, columns)}\n\n"
        "ms/step is the mean wall time of a training step over the run; saved MiB is the peak "
        "of tensors saved for backward in one step (recede.memory).\n\n![loss curves](loss.png)\n")
    print(f"results written to {out}/")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recede", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_parser(sub)
    add_compare_parser(sub)
    add_demo_parser(sub)
    add_bench_parser(sub)
    add_reproduce_parser(sub)
    add_select_parser(sub)
    add_config_option(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    command = "recede"
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parse_with_config(parser, argv)
        args.argv = argv  # recede train --nproc N starts itself again under torchrun
        command = f"recede {args.command}"
        if getattr(args, "out", None) and os.environ.get("RANK", "0") == "0":
            save_resolved(parser, args, args.out)
        return args.run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"{command}: error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        print(f"{command}: stopped: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
