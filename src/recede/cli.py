"""The ``recede`` command line.

``recede train``: train a registered model on a registered dataset with one or more methods
and print a table of final loss, time per step and saved-activation memory.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from recede import data, distributed, models
from recede.memory import measure
from recede.methods import build_method, parse_method
from recede.reports import markdown_table, print_table, write_json
from recede.reproduce import add_reproduce_parser
from recede.selection import add_select_parser
from recede.train import LossIncreaseDecay, batches, make_optimizer, train


def _options(pairs: list[str]) -> dict:
    """``["width=10", "head=shared"]`` → ``{"width": 10, "head": "shared"}`` (YAML scalars)."""
    import yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"option {pair!r} is not of the form key=value")
        out[key.replace("-", "_")] = yaml.safe_load(value)
    return out


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model with one or more methods and compare them")
    p.add_argument("--model", default="resmlp", help=f"one of: {', '.join(models.available())}")
    p.add_argument("--data", default="trig", help=f"one of: {', '.join(data.available())}")
    p.add_argument("--method", action="append", default=None,
                   help="bp, ff, mpc:H, loco:N, loco-double:N, or bpm-<local method> (Paper B); "
                        "repeat to compare (default: bp)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"])
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--momentum", type=float, default=0.0)
    p.add_argument("--lr-decay", type=float, default=0.9,
                   help="Paper A's rule: lr × this whenever the epoch loss rises (1 disables)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-opt", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--data-opt", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default="results/train", help="folder for metrics.json and report.md")
    p.add_argument("--no-progress", action="store_true")
    distributed.add_arguments(p)
    p.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> int:
    if args.nproc > 1 and not distributed.under_torchrun():
        return distributed.launch(args.argv, args.nproc)
    specs = [parse_method(m) for m in (args.method or ["bp"])]
    ctx = distributed.init_from_env("gloo", args.dist_timeout)
    if args.nproc > 1 and args.nproc != ctx.world_size:
        raise ValueError(f"--nproc {args.nproc} but torchrun started {ctx.world_size} processes")
    task = data.load(args.data, **_options(args.data_opt))
    classification = task.kind == "classification"
    rows, histories = [], {}
    for spec in specs:
        torch.manual_seed(args.seed)
        net = models.build(args.model, task, **_options(args.model_opt))
        method = distributed.DataParallel(
            build_method(net, spec, refresh_data=task.train, batch_size=args.batch_size * ctx.world_size,
                         seed=args.seed), net)
        optimizer = make_optimizer(net.parameters(), args.optimizer, args.lr, args.momentum)
        lr_rule = LossIncreaseDecay(optimizer, args.lr_decay)
        start = time.perf_counter()
        history = train(net, method, task.train, optimizer, epochs=args.epochs,
                        batch_size=args.batch_size, test_set=task.test, seed=args.seed,
                        lr_rule=lr_rule, classification=classification,
                        progress=ctx.is_main and not args.no_progress, description=spec.label,
                        rank=ctx.rank, world_size=ctx.world_size)
        seconds = time.perf_counter() - start
        x, y = next(iter(batches(task.train, args.batch_size)))
        _, mem = measure(lambda: method.backward(x, y), module=net)
        optimizer.zero_grad(set_to_none=True)
        last = history[-1]
        steps = sum(r.steps for r in history)
        rows.append({"method": spec.label, "train loss": last.train_loss,
                     "test loss": last.test.get("loss"), "test acc": last.test.get("accuracy"),
                     "ms/step": 1000 * seconds / steps, "saved MiB": mem.saved_peak_mib})
        histories[spec.label] = [r.as_dict() for r in history]
    distributed.shutdown()
    if not ctx.is_main:
        return 0
    columns = ["method", "train loss", "test loss"] + (["test acc"] if classification else []) \
        + ["ms/step", "saved MiB"]
    ranks = f", {ctx.world_size} ranks × batch {args.batch_size}" if ctx.world_size > 1 else ""
    print_table(rows, columns, title=f"{args.model} on {args.data}, {args.epochs} epochs{ranks}")
    out = Path(args.out)
    write_json(out / "metrics.json", {"config": vars(args) | {"run": None}, "rows": rows, "history": histories})
    (out / "report.md").write_text(f"# {args.model} on {args.data}\n\n{markdown_table(rows, columns)}\n")
    print(f"results written to {out}/")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recede", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_parser(sub)
    add_reproduce_parser(sub)
    add_select_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"recede {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
