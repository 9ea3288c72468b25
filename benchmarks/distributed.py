"""What data-parallel training adds to a step: the gradient all-reduce beside the local g_h.

Two CPU ranks (gloo on 127.0.0.1) each run the horizon engine on their batch, then
``DataParallel.reduce_gradients`` averages the gradients in buckets.  For each model and
method the script prints, measured in this one run on rank 0: the median time of the local
``method.backward`` (forward + g_h), of the all-reduce, and the all-reduce's share of the
step.  The all-reduce moves the same bytes for every horizon, so its share is largest where
the local step is cheapest (h = 1).  Nothing is asserted: read the ratios.

    python benchmarks/distributed.py [--steps 20] [--batch 256] [--bucket-mb 25]
    python benchmarks/distributed.py --smoke     # one tiny model, one step: checks the script runs
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.multiprocessing as mp
from torch import nn

from recede.core.blocks import BlockNet
from recede.methods import build_method
from recede.parallel import data_parallel as distributed
from recede.runs.reports import markdown_table

MODELS = {"M2 resmlp 15x10": (15, 10), "resmlp 16x512": (16, 512)}
SMOKE_MODELS = {"resmlp 4x8": (4, 8)}
METHODS = ["bp", "mpc:4", "ff"]


def residual_mlp(T: int, width: int) -> BlockNet:
    layers = [nn.Sequential(nn.Linear(width, width), nn.ReLU()) for _ in range(T)]
    return BlockNet(layers, [nn.Linear(width, 4) for _ in range(T)], nn.MSELoss())


def rank_main(rank: int, world: int, port: int, args: argparse.Namespace) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    distributed.init_from_env("gloo")
    rows = []
    for name, (T, width) in (SMOKE_MODELS if args.smoke else MODELS).items():
        torch.manual_seed(0)
        net = residual_mlp(T, width)
        x, y = torch.randn(args.batch, width), torch.randn(args.batch, 4)
        for spec in METHODS:
            method = distributed.DataParallel(build_method(net, spec), net, args.bucket_mb)
            local, reduce = [], []
            for _ in range(args.steps + 2):
                net.zero_grad(set_to_none=True)
                start = time.perf_counter()
                method.method.backward(x, y)
                middle = time.perf_counter()
                method.reduce_gradients()
                local.append(middle - start)
                reduce.append(time.perf_counter() - middle)
            local_ms, reduce_ms = (1000 * statistics.median(t[2:]) for t in (local, reduce))
            rows.append(
                {
                    "model": name,
                    "method": spec,
                    "params": sum(p.numel() for p in net.parameters()),
                    "local ms": local_ms,
                    "all-reduce ms": reduce_ms,
                    "all-reduce share": reduce_ms / (local_ms + reduce_ms),
                }
            )
    if distributed.is_main():
        print(markdown_table(rows, list(rows[0])))
    distributed.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=256, help="per rank")
    parser.add_argument("--bucket-mb", type=float, default=distributed.DEFAULT_BUCKET_MB)
    parser.add_argument(
        "--smoke", action="store_true", help="one tiny residual MLP, 1 timed step, batch 8: checks the script runs"
    )
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.batch = 1, 8
    mp.spawn(rank_main, args=(2, distributed.free_port(), args), nprocs=2)


if __name__ == "__main__":
    main()
