"""``recede bench``: time and memory of one step of each method on a model, without training.

For each method, on one batch of the chosen data: the median wall time of ``backward`` (one
forward + the method's gradient) over repeated steps after warm-up, its ratio to BP, the
ratio predicted by SPEC §2's cost model ``(2 + ((T−h)(h−1) + h)/T) / 3`` for horizons, and
the peak bytes saved for backward (:mod:`recede.memory`; CUDA peak on a GPU).  The numbers are
ratios measured in one run on one machine, not targets.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from recede.config import int_range
from recede.memory import measure
from recede.methods import parse_method
from recede.reports import markdown_table, print_table, write_json
from recede.run import Workload, add_workload_options


def interleaved_medians(runs: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 1,
                        device: torch.device | None = None) -> dict[str, float]:
    """Median wall seconds of each of ``runs`` over ``repeats`` rounds after ``warmup`` rounds.

    Each round calls every run once, in turn, so a change in machine load hits every run
    alike; on a CUDA ``device`` each call is timed between synchronisations.
    """
    def sync() -> None:
        if device is not None and torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)

    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(warmup + repeats):
        for name, run in runs.items():
            sync()
            start = time.perf_counter()
            run()
            sync()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def timed_step(method, net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """One training step's gradient computation, ``.grad`` cleared first, as a timed run."""
    def step() -> None:
        net.zero_grad(set_to_none=True)
        method.backward(x, y)
    return step


def model_ratio(T: int, h: int) -> float:
    """SPEC §2's predicted step time of horizon h relative to BP (F = VJP = weight-grad = 1)."""
    return (2 + ((T - h) * (h - 1) + h) / T) / 3


def add_bench_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="time and memory of one step per method (no training)")
    add_workload_options(p, out="results/bench")
    p.add_argument("--methods", nargs="+", default=["bp", "ckpt", "ff", "mpc:2", "mpc:4"],
                   metavar="METHOD")
    p.add_argument("--repeats", type=int_range(1), default=10, help="timed steps per method")
    p.set_defaults(run=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    workload = Workload.from_args(args)
    specs = [parse_method(m) for m in args.methods]
    if not any(s.kind == "bp" for s in specs):
        specs.insert(0, parse_method("bp"))
    net = workload.build(args.seed)
    x, y = workload.batch(args.batch_size)
    methods = [workload.method(net, spec, args) for spec in specs]
    seconds = list(interleaved_medians({str(i): timed_step(m, net, x, y) for i, m in enumerate(methods)},
                                       args.repeats, warmup=2, device=workload.device).values())
    net.zero_grad(set_to_none=True)
    saved, rows = [], []
    for spec, method, step in zip(specs, methods, seconds):
        _, memory = measure(lambda: method.backward(x, y), module=net, device=workload.device)
        net.zero_grad(set_to_none=True)
        saved.append(memory.saved_peak_bytes)
        h = {"bp": net.T, "ff": 1, "mpc": spec.value}.get(spec.kind)
        rows.append({"method": spec.label, "ms/step": 1000 * step,
                     "model ratio": None if h is None else model_ratio(net.T, h),
                     "saved MiB": memory.saved_peak_mib})
        if workload.tokens(args.batch_size) is not None:
            rows[-1]["tokens/s"] = workload.tokens(args.batch_size) / step
    bp = next(i for i, s in enumerate(specs) if s.kind == "bp")
    for row, s, b in zip(rows, seconds, saved):
        row["time ratio"], row["memory ratio"] = s / seconds[bp], b / saved[bp]
    columns = ["method", "ms/step", "time ratio", "model ratio", "saved MiB", "memory ratio"] \
        + (["tokens/s"] if workload.tokens(args.batch_size) is not None else [])
    title = f"{args.model} (T = {net.T}), batch {args.batch_size}, {workload.device}"
    print_table(rows, columns, title=title)
    out = Path(args.out)
    write_json(out / "metrics.json", {"rows": rows, "data": workload.task.info})
    (out / "report.md").write_text(f"# Step benchmark: {title}\n\n{markdown_table(rows, columns)}\n\n"
                                   "model ratio: SPEC §2 cost model for horizons.\n")
    print(f"results written to {out}/")
    return 0
