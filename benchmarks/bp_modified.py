"""Extra time and memory of the BP-modified local loss beside its original method (Paper B Tables 4–5).

For FF, LoCo and MPC(h=5) on a shrunk ResNet-62 (CIFAR-shaped random inputs) the script
measures, in this one run:

* time per epoch with K = one epoch of ``--steps`` steps and B' = 1 % of K·B (a multiple of
  b' = 8, at least two micro-batches), as a ratio to the original method
  (Paper B Table 5: ≤ 6 %);  the epoch time is K × the median step time plus one refresh;
* the real peak of a training step (``real MiB``, and ``real / BP``: over BP's step on the same
  B samples), measured as paid (:func:`recede.measure.usage.measure_paid`, right after the timed
  steps, ``.grad`` cleared first): parameters and buffers (and for BP-modified the offsets) plus
  the peak bytes the step allocates — for BP-modified the larger of its step and its refresh
  (a refresh drawn as in training); the refresh's own real peak and BP's on b' samples beside it
  (the refresh's adds the offsets and its running sums);
* as the breakdown, saved-for-backward peak bytes of a training step, of the refresh, and of BP
  on b' samples: the refresh must save no more than BP on b' samples;
* extra state: the offsets (one per trainable parameter of the modified blocks, Paper B
  Table 4) and, during a refresh only, two parameter-sized running sums (one becomes the
  next offset);
* CUDA peak allocated bytes of a step and of a refresh when ``--device cuda``.

Timings are medians over interleaved repeats; nothing is asserted: read the ratios.

    python benchmarks/bp_modified.py [--steps 100] [--batch 32] [--blocks-per-stage 3] [--device cpu]
    python benchmarks/bp_modified.py --smoke      # tiny sizes, seconds: checks the script runs
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch
from torch.utils.data import TensorDataset

from recede.bpm.estimator import BPModified
from recede.measure.usage import measure_paid
from recede.methods import build_method, default_offset_samples
from recede.models import build
from recede.runs.reports import markdown_table


def timed(fn, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="K: steps per epoch")
    parser.add_argument("--batch", type=int, default=32, help="B")
    parser.add_argument("--micro-batch", type=int, default=8, help="b'")
    parser.add_argument("--blocks-per-stage", type=int, default=3)
    parser.add_argument("--widths", default="16,32,64")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a tiny ResNet (T = 6) on 8 × 8 inputs, K = 2, one repeat: checks the script runs",
    )
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.batch, args.micro_batch, args.blocks_per_stage = 2, 4, 2, 2
        args.widths, args.size, args.repeats = "4,4,8", 8, 1
    torch.set_num_threads(args.threads)
    device = args.device
    widths = tuple(int(w) for w in args.widths.split(","))
    K, B, b = args.steps, args.batch, args.micro_batch
    B_prime = default_offset_samples(K, B, b)
    x = torch.randn(B, 3, args.size, args.size, device=device)
    y = torch.randint(0, 10, (B,), device=device)
    refresh_data = TensorDataset(
        torch.randn(B_prime, 3, args.size, args.size, device=device), torch.randint(0, 10, (B_prime,), device=device)
    )
    refresh_set = list(zip(*(t.split(b) for t in refresh_data.tensors)))
    rows = []
    for name in ("ff", "loco:3", "mpc:5"):
        torch.manual_seed(0)
        net = build("resnet62", widths=widths, blocks_per_stage=args.blocks_per_stage).to(device)
        original = build_method(net, name)
        modified = build_method(
            net, "bpm-" + name, refresh_data=refresh_data, period=K, offset_samples=B_prime, micro_batch=b, batch_size=B
        )
        assert isinstance(modified, BPModified)
        modified.data = None  # the refresh is timed on its own below
        modified.refresh(refresh_set)
        step_times = {"original": [], "modified": []}
        refresh_times = []
        for _ in range(args.repeats):
            for key, method in (("original", original), ("modified", modified)):
                net.zero_grad(set_to_none=True)
                step_times[key].append(timed(partial(method.backward, x, y), device))
            refresh_times.append(timed(partial(modified.refresh, refresh_set), device))
        step_o, step_m = (statistics.median(step_times[k]) for k in ("original", "modified"))
        refresh = statistics.median(refresh_times)
        epoch_o, epoch_m = K * step_o, K * step_m + refresh

        # the timed steps above were the warm-up; each measurement clears .grad first
        paid_o = measure_paid(original, net, x, y, device=device)
        modified.data = refresh_data  # so that a refresh, drawn as in training, is measured too
        paid_m = measure_paid(modified, net, x, y, device=device)
        modified.data = None
        bp = build_method(net, "bp")
        paid_bp = measure_paid(bp, net, x, y, device=device)
        # a micro-batch of its own, as a refresh draws it (a view of refresh_data's storage would count all of it)
        paid_bp_b = measure_paid(bp, net, *(t.clone() for t in refresh_set[0]), device=device)
        assert paid_m.refresh is not None and paid_m.refresh.allocated_peak_bytes is not None
        mem_o, mem_m, mem_r, mem_bp_b = paid_o.step, paid_m.step, paid_m.refresh, paid_bp_b.step
        real_o, real_m, real_bp = paid_o.real_peak_bytes, paid_m.real_peak_bytes, paid_bp.real_peak_bytes
        assert real_o is not None and real_m is not None and real_bp is not None
        state = paid_m.state
        real_r = state["parameters"] + state["buffers"] + state["offsets"] + mem_r.allocated_peak_bytes
        elem = next(net.parameters()).element_size()
        param_bytes = sum(p.numel() for p in net.parameters() if p.requires_grad) * elem
        offset_bytes = modified.offset.numel() * modified.offset.element_size()
        row = {
            "method": name,
            "s/epoch orig": epoch_o,
            "s/epoch BPM": epoch_m,
            "extra time %": 100 * (epoch_m / epoch_o - 1),
            "real MiB orig": real_o / 2**20,
            "real MiB BPM": real_m / 2**20,
            "orig real / BP": real_o / real_bp,
            "BPM real / BP": real_m / real_bp,
            "refresh real MiB": real_r / 2**20,
            "BP(b') real MiB": paid_bp_b.real_peak_bytes / 2**20,
            "step saved MiB orig": mem_o.saved_peak_mib,
            "step saved MiB BPM": mem_m.saved_peak_mib,
            "refresh saved MiB": mem_r.saved_peak_mib,
            "BP(b') saved MiB": mem_bp_b.saved_peak_mib,
            "offset / params": offset_bytes / param_bytes,
            "offset MiB": offset_bytes / 2**20,
            "refresh sums MiB": 2 * offset_bytes / 2**20,
        }
        if mem_o.cuda_peak_bytes is not None:
            row |= {
                "CUDA peak MiB orig": mem_o.cuda_peak_bytes / 2**20,
                "CUDA peak MiB BPM step": mem_m.cuda_peak_bytes / 2**20,
                "CUDA peak MiB refresh": mem_r.cuda_peak_bytes / 2**20,
            }
        rows.append(row)
        bp_real_mib = real_bp / 2**20
    print(
        f"resnet62 widths={widths} blocks/stage={args.blocks_per_stage} T={3 * args.blocks_per_stage}, "
        f"input 3x{args.size}x{args.size}, B={B}, K={K} steps (one epoch), B'={B_prime} "
        f"(= {100 * B_prime / (K * B):.2g} % of K·B), b'={b}, device={device}; "
        f"BP's step on B samples: real peak {bp_real_mib:.1f} MiB\n"
    )
    print(markdown_table(rows, list(rows[0])))
    print(
        "\nextra time % target ≤ 6 (Paper B Table 5); refresh saved MiB should equal BP(b') saved MiB "
        "(its real MiB adds the offsets and the refresh's running sums); offset / params ≤ 1 (Paper B Table 4).  "
        "real MiB: parameters, buffers (BPM: offsets) and the peak bytes a step allocates (BPM: the "
        "larger of step and refresh); saved MiB: the part saved for backward."
    )


if __name__ == "__main__":
    main()
