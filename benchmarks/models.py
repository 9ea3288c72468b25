"""Saved-activation memory and step time of horizons 1, 2, 5 and T on the real models, as ratios to BP.

Models (registry names, CIFAR-shaped inputs):

* ``resnet62`` — Paper A's ResNet-62 (T = 30, 16/32/64 channels), 32 × 32 inputs;
* ``vit-small`` — ``vit-b16`` shrunk to width 192, 12 blocks, 3 heads, 4 × 4 patches of 32 × 32
  inputs (65 tokens);
* ``resnet50`` — timm's ResNet-50 (T = 16) at Paper B's 224 × 224 (slow on a CPU; opt in).

For each horizon the script prints the step time (forward + all gradients, median over
interleaved repeats) and the peak bytes saved for backward (``recede.memory.measure``,
parameters excluded), each divided by plain autograd BP on the same model, plus the CUDA peak
allocation ratio on a GPU.  Beside them stand Paper B's Table 4 (memory) and Table 5 (s/epoch)
ratios to BP: ResNet-50 full tune FF 28 %, LoCo 40 %, MPC(5) 71 % of BP's memory; FF 0.97×,
MPC(5) 2.86× BP's time; ViT-B/16 LoRA FF 27 %, MPC(5) 56 %, time 0.90× and 3.0×.  Paper B
measured whole-GPU peak memory (parameters, optimizer state and workspace included), so its
ratios sit above the activation-only ones.  Nothing is asserted: read the ratios.

    python benchmarks/models.py [--models resnet62 vit-small] [--batch 32] [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse

import torch

from recede import MPC
from recede.bench import interleaved_medians, timed_step
from recede.memory import measure
from recede.models import build
from recede.reports import markdown_table

MODELS = {  # name -> (registry name, options, image side)
    "resnet62": ("resnet62", dict(num_classes=10), 32),
    "vit-small": ("vit-b16", dict(num_classes=10, img_size=32, patch_size=4, embed_dim=192, depth=12,
                                  num_heads=3), 32),
    "resnet50": ("resnet50", dict(num_classes=100), 224),
}

# Paper B Tables 4 and 5, ratios to BP: (memory, time) by method label.
PAPER_B = {
    "resnet50": {"h=1": (1555 / 5617, 123.03 / 127.07), "h=5": (3965 / 5617, 363.71 / 127.07)},
    "vit-small": {"h=1": (1519 / 5586, 291.99 / 322.84), "h=5": (3146 / 5586, 967.10 / 322.84)},
}
PAPER_B["resnet62"] = PAPER_B["resnet50"]


def benchmark(name: str, batch: int, repeats: int, device: torch.device) -> list[dict]:
    """One model: rows of ratios to BP for h = 1, 2, 5, T."""
    registry_name, options, side = MODELS[name]
    torch.manual_seed(0)
    net = build(registry_name, **options).to(device)
    x = torch.randn(batch, 3, side, side, device=device)
    y = torch.randint(0, options["num_classes"], (batch,), device=device)
    net.check(x, y)
    horizons = sorted({h for h in (1, 2, 5, net.T) if h <= net.T})

    def plain_bp() -> None:
        net.zero_grad(set_to_none=True)
        net.loss(x, y).backward()

    runs = {"BP": plain_bp}
    for h in horizons:
        runs[f"h={h}"] = timed_step(MPC(net, h), net, x, y)

    memory = {label: measure(run, module=net, device=device)[1] for label, run in runs.items()}
    median = interleaved_medians(runs, repeats, warmup=0, device=device)  # measure() warmed up

    rows = []
    for label in runs:
        if label == "BP":
            continue
        paper = PAPER_B.get(name, {}).get(label, (None, None))
        h = int(label[2:])
        row = {"model": name, "T": net.T, "h": "T" if h == net.T else h,
               "saved / BP": memory[label].saved_peak_bytes / memory["BP"].saved_peak_bytes,
               "time / BP": median[label] / median["BP"],
               "Paper B mem / BP": paper[0], "Paper B time / BP": paper[1]}
        if device.type == "cuda":
            row["CUDA peak / BP"] = memory[label].cuda_peak_bytes / memory["BP"].cuda_peak_bytes
        rows.append(row)
    print(f"{name}: T = {net.T}, batch {batch}, {side}×{side}, BP step {1000 * median['BP']:.0f} ms "
          f"(median of {repeats}), BP saved {memory['BP'].saved_peak_mib:.1f} MiB", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet62", "vit-small"], choices=sorted(MODELS))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = [row for name in args.models for row in benchmark(name, args.batch, args.repeats, device)]
    print(f"device {device}, {torch.get_num_threads()} threads")
    print(markdown_table(rows, list(rows[0])))
    print("Paper B columns: ResNet-50 full tune (Tables 4, 5) beside the ResNets, ViT-B/16 LoRA beside "
          "the ViT; LoCo (Paper B: 40 % / 34 % of BP's memory) is not a horizon and has no row.")


if __name__ == "__main__":
    main()
