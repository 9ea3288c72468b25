"""``recede select``: its options and the front-end over Algorithm 1
(:func:`recede.horizon.selection.select_horizon`)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from recede.horizon.selection import COST_SHAPES, OBJECTIVES, _check_objective, select_horizon


def add_select_parser(sub: argparse._SubParsersAction) -> None:
    from recede.cli.options import float_range, int_range, positive_float

    p = sub.add_parser("select", help="pick a horizon by Paper A's Algorithm 1")
    p.add_argument("--model", default="resmlp")
    p.add_argument("--data", default="trig")
    p.add_argument("--model-opt", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--data-opt", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--horizons", default=None, help="comma-separated subset H (default: 6 spread over 1..T)")
    p.add_argument(
        "--objective",
        default="weighted",
        choices=OBJECTIVES,
        help="constraint = O1 (needs --eps), weighted = O2 (needs --weight)",
    )
    p.add_argument("--eps", type=float_range(0.0, 1.0), default=None, help="O1: require r̂(h) ≥ 1 − eps")
    p.add_argument(
        "--weight", type=float_range(0.0, math.inf, high_open=True), default=None, help="O2: weight of the memory cost"
    )
    p.add_argument("--cost-shape", default="linear", choices=COST_SHAPES)
    p.add_argument("--c", type=positive_float, default=1.0, help="unit cost")
    p.add_argument(
        "--M0", type=positive_float, default=None, help="one device's memory in bytes (default: Table D3's choice)"
    )
    p.add_argument(
        "--weights",
        default=None,
        help="a state_dict file (torch.save) to select on trained weights instead of the initialisation",
    )
    p.add_argument("--batches", type=int_range(1), default=4, help="batches to average cos θ_h over")
    p.add_argument("--batch-size", type=int_range(1), default=100)
    p.add_argument("--seed", type=int_range(0), default=0)
    p.add_argument("--out", default="results/select")
    p.set_defaults(run=run_select)


def _parse_horizons(text: str | None, T: int) -> list[int] | None:
    """``--horizons 1,5,10`` → [1, 5, 10], each in [1, T]."""
    from recede.core.engine import check_horizon

    if text is None:
        return None
    try:
        horizons = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--horizons must be comma-separated integers, got {text!r}") from None
    if not horizons:
        raise ValueError("--horizons is empty; give at least one horizon in [1, T]")
    return [check_horizon(h, T) for h in horizons]


def run_select(args: argparse.Namespace) -> int:
    from recede.config import key_values
    from recede.runs import preflight
    from recede.runs.reports import machine, markdown_table, print_table, write_json
    from recede.runs.train import batches

    _check_objective(args.objective, args.eps, args.weight, args.cost_shape, args.c, args.M0)
    cpu = torch.device("cpu")
    task = preflight.load_data(args.data, key_values(args.data_opt, "--data-opt"))
    torch.manual_seed(args.seed)
    net = preflight.build_model(args.model, task, key_values(args.model_opt, "--model-opt"), cpu)
    preflight.probe(net, task, cpu, f"model {args.model!r}")
    if args.weights is not None:
        preflight.load_state(net, args.weights, "--weights")
    horizons = _parse_horizons(args.horizons, net.T)
    preflight.start(args)
    probe = [b for _, b in zip(range(args.batches), batches(task.train, args.batch_size, True, args.seed))]
    result = select_horizon(
        net, probe, horizons, args.objective, args.eps, args.weight, args.cost_shape, args.c, args.M0
    )
    rows = result.table()
    columns = list(rows[0])
    print_table(rows, columns, title=f"{args.model} on {args.data}: {result.choice.message}")
    out = Path(args.out)
    write_json(
        out / "selection.json", {"config": args.resolved, "data": task.info, "machine": machine(), **result.as_dict()}
    )
    (out / "report.md").write_text(
        f"# Horizon selection: {args.model} on {args.data}\n\n"
        f"{result.choice.message}\n\n{markdown_table(rows, columns)}\n"
    )
    if not result.feasible:
        print(f"warning: {result.choice.message}")
    print(f"results written to {out}/")
    return 0
