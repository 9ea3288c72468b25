"""The engine's own overhead: its step time against the plainest loop that does the same work.

For horizon h, the floor is a hand-written loop over one connected graph: after block k-1
produces x_k (k ≥ h), ONE ``torch.autograd.grad`` call takes L(x_k) back to the weights of block
k-h and of head k (autograd prunes everything below block k-h, so no input gradient is
computed that the method does not need); the graph is kept whole with ``retain_graph``.  It does
the kernels of g_h and nothing else, but keeps every activation (memory is not the point here).
The engine does the same kernels with O(h) memory: a detached graph per block, one autograd
call per block of the carry (fused with the head's), and its bookkeeping.

For h = 1 this floor is "one backward per block (head and block, no input gradient)".
Prints time(engine) / time(floor) for each h, and both relative to BP (``loss.backward()``),
measured in one run with interleaved medians.  Nothing is asserted.

    python benchmarks/overhead.py [--batch 32] [--repeats 30] [--horizons 1 2 5] [--clock cpu|wall]
    python benchmarks/overhead.py --smoke        # a tiny ResNet, one repeat: checks the script runs
"""

from __future__ import annotations

import argparse
from functools import partial

import torch

from recede import MPC, data, models
from recede.measure.usage import CLOCKS, interleaved_medians, keep_freed_memory
from recede.runs.reports import markdown_table


def floor_step(net, x, y, h: int) -> None:
    """g_h with one autograd call per target over a connected graph (see the module docstring)."""
    T, z = net.T, x
    for t in range(T):
        z = net.blocks[t](z)
        k = t + 1
        if k < h:
            continue
        loss = net.depth_loss(z, y, k)
        owners = range(max(T - h, 0), T) if k == T else [k - h]
        params = [p for j in owners for p in net.block_parameters(j)] + net.head_parameters(k)
        grads = torch.autograd.grad(loss, params, retain_graph=k < T, allow_unused=True)
        for p, g in zip(params, grads):
            if g is not None:
                p.grad = g if p.grad is None else p.grad + g


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--horizons", type=int, nargs="+", default=[1, 2, 5])
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="cpu",
        help="cpu: this process's CPU seconds (default; a shared machine's other jobs do not "
        "inflate them with one thread); wall: elapsed time",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a ResNet-62 shrunk to T = 3, batch 4, h = 1 and 2, one repeat: checks the script runs",
    )
    args = parser.parse_args()
    if args.smoke:
        args.batch, args.repeats, args.horizons = 4, 1, [1, 2]
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    task = data.load("digits")
    net = models.build("resnet62", task, **({"widths": (4, 4, 8), "blocks_per_stage": 1} if args.smoke else {}))
    x, y = next(iter(torch.utils.data.DataLoader(task.train, batch_size=args.batch)))

    def run(step):
        def call() -> None:
            net.zero_grad(set_to_none=True)
            step()

        return call

    net.eval()  # fixed BatchNorm statistics, so that the two gradients are comparable
    for h in args.horizons:
        grads = []
        for step in (MPC(net, h).backward, partial(floor_step, net, h=h)):
            net.zero_grad(set_to_none=True)
            step(x, y)
            grads.append(torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None]))
        print(f"h = {h}: max |engine - floor| over all gradients = {float((grads[0] - grads[1]).abs().max()):.2e}")
    net.train()

    runs = {"bp": run(lambda: net.loss(x, y).backward())}
    for h in args.horizons:
        engine = MPC(net, h)
        runs[f"engine h={h}"] = run(lambda engine=engine: engine.backward(x, y))
        runs[f"floor h={h}"] = run(lambda h=h: floor_step(net, x, y, h))
    seconds = interleaved_medians(runs, args.repeats, warmup=1 if args.smoke else 3, clock=CLOCKS[args.clock])
    rows = [
        {
            "h": h,
            "engine / BP": seconds[f"engine h={h}"] / seconds["bp"],
            "floor / BP": seconds[f"floor h={h}"] / seconds["bp"],
            "engine / floor": seconds[f"engine h={h}"] / seconds[f"floor h={h}"],
        }
        for h in args.horizons
    ]
    print(
        f"resnet62 (T = {net.T}) on digits, batch {args.batch}, {args.threads} thread(s), {args.clock} clock; "
        f"BP step {1000 * seconds['bp']:.1f} ms (median of {args.repeats}, interleaved)\n"
    )
    print(markdown_table(rows, ["h", "engine / BP", "floor / BP", "engine / floor"]))


if __name__ == "__main__":
    main()
