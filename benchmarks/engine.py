"""Step time, real peak memory and saved activations of the horizon engine against plain ``loss.backward()``.

A T = 32 residual MLP (width 1024, batch 512, a linear head per depth) on the CPU.  For each
horizon h the script prints, measured in this one run:

* the step time (forward + gradients) as a ratio to plain autograd BP on the same model,
* the layer-aware cost model's ratio beside it (:mod:`recede.measure.cost`: each block's forward,
  input-VJP, weight-gradient and full backward and each head, timed in the same rounds), and
  Paper A's uniform count ``(2 + ((T-h)(h-1) + h) / T) / 3``, which one-layer blocks like these
  should also follow,
* the real peak of a step (``real MiB``, ``real / BP``): :func:`recede.measure.usage.measure_paid`
  after a warm-up step, ``.grad`` cleared first so the gradients count — parameters plus the
  peak bytes the step allocates (``torch.profiler``'s allocation events; no optimizer state, as
  no optimizer steps here),
* as its breakdown, saved-activation bytes (``saved MiB``, ``saved / BP``), beside the bound
  ``(h+1)/T`` (+ the head's bytes) that the targets check.

Timings are medians over interleaved repeats, so slow drift of a shared machine hits every
configuration alike; by default they are this process's CPU seconds (``--clock cpu``), which
other jobs on a shared machine do not inflate (with several threads: their summed CPU time);
``--clock wall`` times wall seconds.  glibc's malloc keeps freed memory
(:func:`recede.measure.usage.keep_freed_memory`) unless ``--default-allocator``.  Nothing is asserted:
read the ratios.

    python benchmarks/engine.py [--T 32] [--width 1024] [--batch 512] [--repeats 5] [--threads 1]
    python benchmarks/engine.py --smoke          # tiny sizes, one repeat: checks the script runs
"""

from __future__ import annotations

import argparse
import time
from functools import partial
from types import SimpleNamespace

import torch
from torch import nn

from recede import MPC, BlockNet
from recede.measure.cost import calibrate, horizon_cost, uniform_ratio
from recede.measure.memory import measure
from recede.measure.usage import interleaved_medians, keep_freed_memory, measure_paid, timed_step
from recede.models.mlp import Residual
from recede.runs.reports import markdown_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=int, default=32)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--horizons", type=int, nargs="*", default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    parser.add_argument(
        "--default-allocator",
        action="store_true",
        help="leave glibc's malloc as it is (by default freed memory stays in the process)",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="T = 4, width 16, batch 8, one repeat: checks the script runs"
    )
    args = parser.parse_args()
    if args.smoke:
        args.T, args.width, args.batch, args.repeats = 4, 16, 8, 1
    kept = not args.default_allocator and keep_freed_memory()
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    T = args.T
    horizons = args.horizons or [h for h in (1, 2, 4, 8, 16, 32) if h <= T]

    torch.manual_seed(0)
    net = BlockNet(
        [Residual(args.width) for _ in range(T)],
        [nn.Linear(args.width, args.classes) for _ in range(T)],
        nn.CrossEntropyLoss(),
    )
    x, y = torch.randn(args.batch, args.width), torch.randint(0, args.classes, (args.batch,))
    net.check(x, y)

    plain_bp = SimpleNamespace(backward=lambda x, y: net.loss(x, y).backward())  # autograd's own BP
    methods = {"BP": plain_bp, **{h: MPC(net, h) for h in horizons}}
    runs = {key: timed_step(m, net, x, y) for key, m in methods.items()}

    costs, median = calibrate(
        net, x, y, partial(interleaved_medians, repeats=args.repeats, clock=clock), alongside=runs
    )
    net.zero_grad(set_to_none=True)

    paid = {}
    for name, m in methods.items():
        runs[name]()  # a warm-up step just before the measured one
        paid[name] = measure_paid(m, net, x, y)
    saved = {name: p.step.saved_peak_bytes for name, p in paid.items()}
    real = {name: p.real_peak_bytes for name, p in paid.items()}
    z = x
    with torch.no_grad():
        for block in net.blocks:
            z = block(z)
    head = measure(lambda: net.loss_fn(net.head(T)(z.requires_grad_()), y).backward(), module=net)[1]
    head_ratio = head.saved_peak_bytes / saved["BP"]

    rows = []
    for h in horizons:
        time_ratio, model = median[h] / median["BP"], horizon_cost(costs, h) / horizon_cost(costs, T)
        bound = (h + 1) / T + head_ratio
        rows.append(
            {
                "h": h,
                "time / BP": time_ratio,
                "layer-aware model": model,
                "time / model": time_ratio / model,
                "uniform model": uniform_ratio(T, h),
                "real MiB": real[h] / 2**20,
                "real / BP": real[h] / real["BP"],
                "saved MiB": saved[h] / 2**20,
                "saved / BP": saved[h] / saved["BP"],
                "bound (h+1)/T + head": bound,
                "within targets": "yes"
                if (time_ratio / model <= 1.10 and (h < T or time_ratio <= 1.05) and saved[h] / saved["BP"] <= bound)
                else "NO",
            }
        )
    print(
        f"T = {T} residual MLP, width {args.width}, batch {args.batch}, {torch.get_num_threads()} threads, "
        f"{'freed memory kept' if kept else 'default allocator'}; "
        f"plain BP step {1000 * median['BP']:.0f} ms {args.clock} time (median of {args.repeats}), "
        f"BP real peak {real['BP'] / 2**20:.1f} MiB, saved {saved['BP'] / 2**20:.1f} MiB"
    )
    print(markdown_table(rows, list(rows[0])))
    print("targets: time/model <= 1.10 (h = T: time/BP <= 1.05); saved/BP <= (h+1)/T + head")


if __name__ == "__main__":
    main()
