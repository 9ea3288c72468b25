"""What a CPU user sees: the allocation peak of a step against the resident set, with glibc's
default ``malloc`` and with freed memory returned (``recede.measure.memory.return_freed_memory``).

One process, a residual MLP (width 256, 16 blocks, batch 2048, one thread), steps FF, BP, FF,
FF; for each, the peak bytes allocated (profiler events), the rise of the resident set over the
step, and the resident set above the process's start afterwards.  Run it once per mode:

    python benchmarks/cpu_allocator.py default
    python benchmarks/cpu_allocator.py return

``--smoke`` runs the same steps on a tiny MLP (width 32, 4 blocks, batch 64) in seconds.
"""

from __future__ import annotations

import argparse
from functools import partial

import torch

from recede import models
from recede.measure.memory import allocation_peak, resident_peak, return_freed_memory
from recede.methods import build_method


def resident_mib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) // 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", default="default", choices=["default", "return"])
    parser.add_argument("--smoke", action="store_true", help="a tiny MLP, seconds")
    args = parser.parse_args()
    mode = args.mode
    width, depth, batch = (32, 4, 64) if args.smoke else (256, 16, 2048)
    if mode == "return":
        return_freed_memory()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = models.build("resmlp", width=width, depth=depth)
    x, y = torch.randn(batch, 1), torch.randn(batch, 4)
    start = resident_mib()
    for name in ["ff", "bp", "ff", "ff"]:
        method = build_method(net, name)
        net.zero_grad(set_to_none=True)
        _, allocated = allocation_peak(partial(method.backward, x, y))
        net.zero_grad(set_to_none=True)
        _, rise = resident_peak(partial(method.backward, x, y))
        net.zero_grad(set_to_none=True)
        print(
            f"{mode:8s} {name}: allocated peak {allocated / 2**20:6.1f} MiB, resident rise "
            f"{rise / 2**20:6.1f} MiB, resident above start after the step {resident_mib() - start} MiB"
        )


if __name__ == "__main__":
    main()
