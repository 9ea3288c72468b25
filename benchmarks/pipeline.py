"""Receding-horizon pipeline against BP under ``torch.distributed.pipelining``, in one run.

S gloo ranks on this machine's CPU hold the same stage split of a residual MLP (T blocks of
``x + tanh(Wx + b)``, a linear head per depth, cross-entropy).  Each step is one batch of B
samples in M = 4·S micro-batches.  Per S and per seed, every rank times, interleaved round by
round so that load changes hit every method alike (``recede.measure.usage.interleaved_medians``; each
timed step ends with a barrier, so it is the pipeline's makespan):

* ``recede.parallel.pipeline.Pipeline`` with h = 1, 2, T/2 and T,
* BP with ``ScheduleGPipe`` and ``Schedule1F1B`` of ``torch.distributed.pipelining``,

and measures each rank's real peak of one step: the bytes it allocates above its start
(``recede.measure.memory.allocation_peak``: activations, gradients, received tensors, temporaries;
the parameters, the same for every method, are left out) and, as the activation part, the
peak saved-activation bytes (``recede.measure.memory``'s saved-tensor meter, parameters and the
input batch excluded).  Printed and written to ``--out`` (JSON, Markdown, PNG): throughput
(samples/s), each rank's real peak and the largest rank's as ratios to 1F1B-BP's (mean ± std
over seeds; the saved-tensor ratios beside them), the pipeline's idle fraction measured per rank (1 − compute
time / step time) beside the one its schedule predicts with unit costs (``plan.simulate``),
and, as a check that both compute BP, the largest difference between the gradients of h = T
and of 1F1B-BP.  Nothing is asserted: read the ratios, and mind the CPU count (S ranks on
fewer cores share them, which confounds throughput).

    python benchmarks/pipeline.py [--ranks 2 4] [--blocks 8] [--width 256] [--batch 256]
                                  [--repeats 7] [--seeds 3] [--out results/pipeline]
    python benchmarks/pipeline.py --smoke       # 2 ranks, tiny sizes, a temporary folder: checks it runs
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

from recede.core.blocks import BlockNet
from recede.measure.memory import SavedTensorMeter, allocation_peak
from recede.measure.usage import interleaved_medians
from recede.models.mlp import Residual
from recede.parallel import data_parallel as distributed
from recede.parallel.pipeline import Pipeline, Plan, even_sizes, simulate
from recede.runs.plots import figure
from recede.runs.reports import markdown_table, write_json

CLASSES = 10
BASELINE = "1F1B-BP"


class _LastStage(nn.Module):
    """The last stage for torch's schedules: its blocks, then the final head."""

    def __init__(self, blocks: list[nn.Module], head: nn.Module) -> None:
        super().__init__()
        self.blocks, self.head = nn.Sequential(*blocks), head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x))


def residual_mlp(T: int, width: int, seed: int) -> BlockNet:
    torch.manual_seed(seed)
    return BlockNet(
        [Residual(width, activation=nn.Tanh) for _ in range(T)],
        [nn.Linear(width, CLASSES) for _ in range(T)],
        nn.CrossEntropyLoss(),
    )


def bp_schedule(net: BlockNet, sizes: list[int], schedule: type, micro_batches: int, x: torch.Tensor, y: torch.Tensor):
    """BP on this rank's stage of ``sizes`` with one of torch's schedules: a step on (x, y)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    a = sum(sizes[:rank])
    blocks = list(net.blocks[a : a + sizes[rank]])
    module = _LastStage(blocks, net.head(net.T)) if rank == world - 1 else nn.Sequential(*blocks)
    stage = PipelineStage(module, rank, world, torch.device("cpu"))
    runner = schedule(stage, n_microbatches=micro_batches, loss_fn=net.loss_fn)

    def step() -> None:
        if rank == 0:
            runner.step(x)
        elif rank == world - 1:
            runner.step(target=y)
        else:
            runner.step()

    return step


def _own_grads(net: BlockNet) -> dict[int, torch.Tensor]:
    return {i: p.grad.clone() for i, p in enumerate(net.parameters()) if p.grad is not None}


def measure_seed(args: argparse.Namespace, seed: int) -> dict:
    """This rank's medians, memory and idle fractions for every method, on one seed."""
    world = dist.get_world_size()
    T, M = args.blocks, 4 * world
    sizes = even_sizes(T, world)
    net = residual_mlp(T, args.width, seed)
    g = torch.Generator().manual_seed(seed + 1)
    x, y = torch.randn(args.batch, args.width, generator=g), torch.randint(0, CLASSES, (args.batch,), generator=g)
    steps, idle = {}, {}
    for h in sorted({1, 2, T // 2, T}):
        pipe, idle[f"h={h}"] = Pipeline(net, h, M, sizes=sizes), []

        def step(pipe: Pipeline = pipe, idle: list = idle[f"h={h}"]) -> None:
            pipe.backward(x, y)
            idle.append(pipe.last_timing.idle_fraction)

        steps[f"h={h}"] = step
    for name, schedule in (("GPipe-BP", ScheduleGPipe), (BASELINE, Schedule1F1B)):
        steps[name] = bp_schedule(net, sizes, schedule, M, x, y)

    def timed(run):
        def step() -> None:
            net.zero_grad(set_to_none=True)
            run()
            dist.barrier()

        return step

    check = {}
    for name in (f"h={T}", BASELINE):  # both are BP: the same gradients
        timed(steps[name])()
        check[name] = _own_grads(net)
    difference = max(float((check[f"h={T}"][i] - check[BASELINE][i]).abs().max()) for i in check[BASELINE])
    seconds = interleaved_medians({name: timed(run) for name, run in steps.items()}, args.repeats, warmup=1)
    memory, real = {}, {}
    exclude = [*net.parameters(), x, y]
    for name, run in steps.items():
        net.zero_grad(set_to_none=True)
        with SavedTensorMeter(exclude) as meter:
            run()
        dist.barrier()
        memory[name] = meter.peak_bytes
        net.zero_grad(set_to_none=True)
        real[name] = allocation_peak(run)[1]
        dist.barrier()
    return {
        "seconds": seconds,
        "memory": memory,
        "real": real,
        "difference": difference,
        "idle": {k: statistics.median(v) for k, v in idle.items() if v},
    }


def rank_main(rank: int, world: int, port: int, args: argparse.Namespace, out: Path) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    distributed.init_from_env("gloo", timeout=600)
    mine = [measure_seed(args, seed) for seed in range(args.seeds)]
    gathered = [None] * world
    dist.all_gather_object(gathered, mine)
    if rank == 0:
        torch.save(gathered, out / f"raw-{world}.pt")
    distributed.shutdown()


def summarise(world: int, per_rank: list[list[dict]], args: argparse.Namespace) -> list[dict]:
    """Rows of ratios to 1F1B-BP: throughput (from the step's makespan: the slowest rank's
    median) and memory per rank, mean ± std over seeds."""
    seeds = range(args.seeds)
    names = list(per_rank[0][0]["seconds"])
    T, M = args.blocks, 4 * world
    rows = []
    for name in names:
        step = [max(per_rank[r][s]["seconds"][name] for r in range(world)) for s in seeds]
        base = [max(per_rank[r][s]["seconds"][BASELINE] for r in range(world)) for s in seeds]
        speed = [b / t for t, b in zip(step, base)]
        row = {
            "ranks": world,
            "method": name,
            "M": M,
            "samples/s": f"{statistics.mean(args.batch / t for t in step):.0f}",
            "throughput / 1F1B": _mean_std(speed),
        }
        for kind, label in (("real", "real"), ("memory", "saved")):
            peak = [
                max(per_rank[r][s][kind][name] for r in range(world))
                / max(per_rank[r][s][kind][BASELINE] for r in range(world))
                for s in seeds
            ]
            row[f"largest rank {label} / 1F1B's"] = _mean_std(peak)
        for r in range(world):
            real = [per_rank[r][s]["real"][name] / per_rank[r][s]["real"][BASELINE] for s in seeds]
            row[f"real / 1F1B, rank {r}"] = _mean_std(real)
            row[f"real MiB, rank {r}"] = f"{per_rank[r][0]['real'][name] / 2**20:.3f}"
            mem = [per_rank[r][s]["memory"][name] / per_rank[r][s]["memory"][BASELINE] for s in seeds]
            row[f"saved / 1F1B, rank {r}"] = _mean_std(mem)
            row[f"saved MiB, rank {r}"] = f"{per_rank[r][0]['memory'][name] / 2**20:.3f}"
        if name.startswith("h="):
            h = int(name[2:])
            idle = [per_rank[r][s]["idle"][name] for r in range(world) for s in seeds]
            row["idle measured"] = f"{statistics.mean(idle):.2f}"
            row["idle predicted"] = f"{simulate(Plan(tuple(even_sizes(T, world)), h), M).bubble:.2f}"
        rows.append(row)
    return rows


def _mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {spread:.2f}"


def plot(rows: list[dict], path: Path) -> None:
    """Throughput and rank-0 memory ratios to 1F1B-BP, per method, one panel per rank count."""
    worlds = sorted({row["ranks"] for row in rows})
    with figure(path, 1, len(worlds), figsize=(5 * len(worlds), 4), squeeze=False) as (fig, axes):
        for ax, world in zip(axes[0], worlds):
            mine = [row for row in rows if row["ranks"] == world]
            labels = [row["method"] for row in mine]
            at = range(len(mine))
            ax.bar(
                [i - 0.2 for i in at],
                [float(r["throughput / 1F1B"].split()[0]) for r in mine],
                0.4,
                label="throughput / 1F1B-BP",
            )
            ax.bar(
                [i + 0.2 for i in at],
                [float(r["largest rank real / 1F1B's"].split()[0]) for r in mine],
                0.4,
                label="largest rank's real peak / 1F1B-BP's",
            )
            ax.axhline(1, color="grey", linewidth=0.8)
            ax.set_xticks(list(at), labels, rotation=30, fontsize=8)
            ax.set_title(f"{world} gloo ranks, M = {4 * world}")
            ax.legend(fontsize=8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--blocks", type=int, default=8, help="T")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batch", type=int, default=256, help="B, cut into M = 4·ranks micro-batches")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--out", default=None, help="results folder (default results/pipeline; a new temporary folder with --smoke)"
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="2 ranks, T = 4, width 8, batch 16, one seed and repeat: checks the script runs",
    )
    args = parser.parse_args()
    if args.smoke:
        args.ranks, args.blocks, args.width, args.batch, args.repeats, args.seeds = [2], 4, 8, 16, 1, 1
    args.out = args.out or (tempfile.mkdtemp(prefix="pipeline-smoke-") if args.smoke else "results/pipeline")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, checks = [], {}
    for world in args.ranks:
        mp.spawn(rank_main, args=(world, distributed.free_port(), args, out), nprocs=world)
        per_rank = torch.load(out / f"raw-{world}.pt", weights_only=False)
        (out / f"raw-{world}.pt").unlink()
        rows += summarise(world, per_rank, args)
        checks[world] = max(seed["difference"] for rank in per_rank for seed in rank)
    columns = (
        [
            "ranks",
            "method",
            "M",
            "samples/s",
            "throughput / 1F1B",
            "idle measured",
            "idle predicted",
            "largest rank real / 1F1B's",
            "largest rank saved / 1F1B's",
        ]
        + [f"real / 1F1B, rank {r}" for r in range(max(args.ranks))]
        + [f"real MiB, rank {r}" for r in range(max(args.ranks))]
    )
    title = (
        f"residual MLP T = {args.blocks}, width {args.width}, batch {args.batch}, float32, "
        f"gloo on {os.cpu_count()} CPU cores, {args.seeds} seeds × {args.repeats} steps"
    )
    table = markdown_table(rows, columns)
    notes = "\n".join(f"- {w} ranks: largest |grad(h = T) − grad(1F1B-BP)| = {d:.3g}" for w, d in checks.items())
    print(f"{title}\n\n{table}\n\n{notes}")
    write_json(out / "metrics.json", {"title": title, "rows": rows, "bp_difference": checks, "args": vars(args)})
    (out / "report.md").write_text(f"# {title}\n\n{table}\n\n{notes}\n\n![ratios](ratios.png)\n")
    plot(rows, out / "ratios.png")
    print(f"results written to {out}/")


if __name__ == "__main__":
    main()
