"""Step time against the layer-aware cost model, and saved-activation memory, on real models.

Models (``--models``):

* ``resnet62`` — Paper A's ResNet-62 (T = 30, 16/32/64 channels, two convs per block), 32 × 32;
* ``resnet50`` — timm's ResNet-50 (T = 16, three convs per bottleneck), at ``--resnet50-side``
  (default 96, so it fits a CPU; Paper B uses 224);
* ``vit-small`` — ``vit-b16`` shrunk to width 192, 12 timm transformer blocks, 3 heads,
  4 × 4 patches of 32 × 32 inputs (65 tokens);
* ``gpt-small`` — a GPT-2-shaped stack: byte embedding, 8 pre-norm ``nn.TransformerEncoderLayer``
  (width 256, 4 heads, MLP 1024, causal), one LM head (norm → linear to 256 bytes) shared by
  every depth, sequences of 128 tokens.

For each horizon h the script prints, from one run: the step time (forward + all gradients) as
a ratio to plain autograd BP on the same model; the layer-aware cost model's ratio
(:mod:`recede.measure.cost`: per-block forward, input-VJP, weight-gradient and full backward, and the
heads, timed in the same interleaved rounds as the steps); time / model (target: within 1.10);
Paper A's uniform count (SPEC §2), which treats every block as one layer; the real peak of a
step (``real MiB``, and ``real / BP``: :func:`recede.measure.usage.measure_paid` after a warm-up
step, ``.grad`` cleared first so the gradients count — parameters and buffers plus the peak bytes
the step allocates, from ``torch.profiler``'s allocation events on a CPU or
``max_memory_allocated`` on CUDA; no optimizer state, as no optimizer steps here); as its
breakdown the bytes saved for backward (``saved MiB``, and ``saved / BP``; and the CUDA peak's
ratio, on a GPU); and beside them Paper B's Tables 4 and 5 (ResNet-50 full tune, ViT-B/16 LoRA:
whole-GPU peak memory and s/epoch over BP's).  Timings are medians over interleaved
repeats; on a CPU they are by default this process's CPU seconds on one thread (``--clock cpu``),
which other jobs on a shared machine do not inflate and which equal wall time on an idle one;
``--clock wall`` times wall seconds.  glibc's malloc is told to keep freed memory
(:func:`recede.measure.usage.keep_freed_memory`, as the CUDA caching allocator does) unless
``--default-allocator``: otherwise a step's time depends on the step before it.  Nothing is
asserted: read the ratios.

    python benchmarks/models.py [--models resnet62 resnet50 vit-small gpt-small] [--batch 16] [--repeats 7]
                                [--device cpu]
    python benchmarks/models.py --smoke      # tiny models of each kind: checks the script runs
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
from recede.measure.usage import interleaved_medians, keep_freed_memory, measure_paid, timed_step
from recede.models import build
from recede.runs.reports import markdown_table

# Paper B Tables 4 and 5, ratios to BP: (memory, time) by horizon.
PAPER_B = {
    "resnet50": {1: (1555 / 5617, 123.03 / 127.07), 5: (3965 / 5617, 363.71 / 127.07)},
    "vit-small": {1: (1519 / 5586, 291.99 / 322.84), 5: (3146 / 5586, 967.10 / 322.84)},
}
PAPER_B["resnet62"] = PAPER_B["resnet50"]


class Embedding(nn.Module):
    """Token and position embedding, then the first decoder layer."""

    def __init__(self, vocab: int, width: int, length: int, layer: nn.Module) -> None:
        super().__init__()
        self.tokens, self.positions, self.layer = nn.Embedding(vocab, width), nn.Embedding(length, width), layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(self.tokens(x) + self.positions.weight[: x.shape[1]])


class Causal(nn.Module):
    """A pre-norm transformer layer with a causal mask (GPT-2's block)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(
            width, heads, 4 * width, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1], device=x.device, dtype=x.dtype)
        return self.layer(x, src_mask=mask, is_causal=True)


def per_token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())


def gpt_small(depth: int = 8, width: int = 256, heads: int = 4, vocab: int = 256, length: int = 128) -> BlockNet:
    """A GPT-2-shaped decoder stack whose blocks are its layers, one LM head shared by every depth."""
    layers = [Causal(width, heads) for _ in range(depth)]
    head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, vocab))
    return BlockNet([Embedding(vocab, width, length, layers[0]), *layers[1:]], head, per_token_cross_entropy)


def workload(
    name: str, batch: int, resnet50_side: int, smoke: bool = False
) -> tuple[BlockNet, torch.Tensor, torch.Tensor]:
    """The model and one batch of random inputs and targets (``smoke``: a tiny model of the same kind)."""
    if name == "gpt-small":
        length = 8 if smoke else 128
        net = gpt_small(depth=3, width=16, heads=2, length=length) if smoke else gpt_small()
        x = torch.randint(0, 256, (batch, length))
        return net, x, torch.randint(0, 256, (batch, length))
    if name == "resnet62":
        net, side = (
            build("resnet62", num_classes=10, **({"widths": (4, 4, 8), "blocks_per_stage": 1} if smoke else {})),
            8 if smoke else 32,
        )
    elif name == "resnet50":
        net, side = (
            build(
                "resnet50", num_classes=100, **({"layers": (1, 1, 1, 1), "channels": (4, 8, 8, 16)} if smoke else {})
            ),
            resnet50_side,
        )
    else:
        shape = (
            dict(img_size=8, embed_dim=16, depth=3, num_heads=2)
            if smoke
            else dict(img_size=32, embed_dim=192, depth=12, num_heads=3)
        )
        net, side = build("vit-b16", num_classes=10, patch_size=4, **shape), shape["img_size"]
    x = torch.randn(batch, 3, side, side)
    return net, x, torch.randint(0, 10, (batch,))


def benchmark(
    name: str,
    batch: int,
    repeats: int,
    resnet50_side: int,
    device: torch.device,
    clock=time.perf_counter,
    smoke: bool = False,
) -> list[dict]:
    """One model: a row per horizon h = 1, 2, 3, 5, T/2, T."""
    torch.manual_seed(0)
    net, x, y = workload(name, batch, resnet50_side, smoke)
    net, x, y = net.to(device), x.to(device), y.to(device)
    net.check(x, y)
    T = net.T
    horizons = sorted({h for h in (1, 2, 3, 5, T // 2, T) if 1 <= h <= T})

    plain_bp = SimpleNamespace(backward=lambda x, y: net.loss(x, y).backward())  # autograd's own BP
    methods = {"BP": plain_bp, **{h: MPC(net, h) for h in horizons}}
    runs = {key: timed_step(m, net, x, y) for key, m in methods.items()}
    paid = {}
    for key, m in methods.items():
        runs[key]()  # a warm-up step just before the measured one
        paid[key] = measure_paid(m, net, x, y, device=device)
    memory = {key: p.step for key, p in paid.items()}
    real = {key: p.real_peak_bytes for key, p in paid.items()}
    meter = partial(interleaved_medians, repeats=repeats, warmup=0, device=device, clock=clock)
    costs, median = calibrate(net, x, y, meter, alongside=runs)
    net.zero_grad(set_to_none=True)
    bp_model = horizon_cost(costs, T)
    rows = []
    for h in horizons:
        time_ratio, model = median[h] / median["BP"], horizon_cost(costs, h) / bp_model
        paper = PAPER_B.get(name, {}).get(h, (None, None))
        row = {
            "model": name,
            "T": T,
            "h": "T" if h == T else h,
            "time / BP": time_ratio,
            "layer-aware model": model,
            "time / model": time_ratio / model,
            "uniform model": uniform_ratio(T, h),
            "real MiB": real[h] / 2**20,
            "real / BP": real[h] / real["BP"],
            "saved MiB": memory[h].saved_peak_mib,
            "saved / BP": memory[h].saved_peak_bytes / memory["BP"].saved_peak_bytes,
        }
        if device.type == "cuda":
            row["CUDA peak / BP"] = memory[h].cuda_peak_bytes / memory["BP"].cuda_peak_bytes
        rows.append(row | {"Paper B mem / BP": paper[0], "Paper B time / BP": paper[1]})
    print(
        f"{name}: T = {T}, batch {batch}, input {tuple(x.shape[1:])}, plain BP step "
        f"{1000 * median['BP']:.0f} ms (model {1000 * bp_model:.0f} ms; medians of {repeats}), "
        f"BP real peak {real['BP'] / 2**20:.1f} MiB, saved {memory['BP'].saved_peak_mib:.1f} MiB",
        flush=True,
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        nargs="+",
        default=["resnet62", "resnet50", "vit-small", "gpt-small"],
        choices=["resnet62", "resnet50", "vit-small", "gpt-small"],
    )
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--resnet50-side", type=int, default=96)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--clock",
        choices=["cpu", "wall"],
        default=None,
        help="CPU seconds of this process or wall seconds (default: cpu on a CPU, wall on CUDA)",
    )
    parser.add_argument(
        "--default-allocator",
        action="store_true",
        help="leave glibc's malloc as it is (by default freed memory stays in the process)",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny models of each kind, batch 2, one repeat: checks the script runs"
    )
    args = parser.parse_args()
    if args.smoke:
        args.batch, args.repeats, args.resnet50_side = 2, 1, 16
    kept = not args.default_allocator and keep_freed_memory()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    clock = args.clock or ("wall" if device.type == "cuda" else "cpu")
    rows = [
        row
        for name in args.models
        for row in benchmark(
            name,
            args.batch,
            args.repeats,
            args.resnet50_side,
            device,
            time.process_time if clock == "cpu" else time.perf_counter,
            args.smoke,
        )
    ]
    print(
        f"device {device}, {torch.get_num_threads()} CPU threads, {clock} clock, "
        f"{'freed memory kept (glibc mallopt)' if kept else 'default allocator'}"
    )
    print(markdown_table(rows, list(rows[0])))
    print(
        "target: time / model within 1.10 at every h.  Paper B columns: ResNet-50 full tune "
        "(Tables 4, 5) beside the ResNets, ViT-B/16 LoRA beside the ViT."
    )


if __name__ == "__main__":
    main()
