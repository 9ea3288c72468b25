"""Does a ``recede pretrain`` source checkpoint transfer?  BP fine-tuned from it vs BP from random
weights on the target task, per model, over seeds (docs/finetune.md).

ResNet and ViT: source distorted digits 0-4 (``recede pretrain --preset resnet|vit``), target
``recede.runs.pretrain.TARGET``: distorted digits 5-9, the first ``--train-size`` training images
(200), the same model; ``--init-skip 'heads.*'``: every head (the final classifier included)
starts fresh, the blocks start from the checkpoint.  BP from random weights runs at the
fine-tuning lr and at ``SCRATCH_LR`` (the better of the two is the fair comparison).
Llama-layout LM: source the standard library's source (``--preset llama``), target an
English text (``--lm-target``, default the GPL-3 text Debian ships; skipped if absent), the
whole model from the checkpoint (same byte vocabulary, the head tied to the embedding).
Prints, per model, the pretraining call's time and the target's test accuracy or bits per byte
(mean ± sd over seeds).

    PYTHONPATH=src OMP_NUM_THREADS=1 python experiments/finetune/transfer.py [--smoke]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from recede.cli import build_parser, main
from recede.runs.pretrain import PRESETS, TARGET, checkpoint_name, settings

OPTIMIZER = {
    "resnet": ["--lr", "0.01", "--momentum", "0.9"],
    "vit": ["--optimizer", "adam", "--lr", "0.001"],
    "llama": ["--optimizer", "adam", "--lr", "0.001"],
}
SCRATCH_LR = {"resnet": "0.05", "vit": "0.003", "llama": "0.003"}
"""A second lr for BP from random weights, which may want a larger one than fine-tuning."""


def quality(args: list[str], column: str) -> float:
    """``recede train ARGS``'s final ``column`` (test acc, test bits/byte)."""
    with tempfile.TemporaryDirectory() as out:
        status = main(["train", *args, "--out", out, "--no-progress", "--lr-decay", "1"])
        if status:
            sys.exit(f"recede train {' '.join(args)} failed ({status})")
        return float(json.loads((Path(out) / "metrics.json").read_text())["rows"][0][column])


def main_(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="one seed, one epoch, seconds")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30, help="the vision targets' epochs")
    parser.add_argument("--lm-epochs", type=int, default=4, help="the LM target's epochs")
    parser.add_argument("--train-size", type=int, default=TARGET["train_size"])
    parser.add_argument("--lm-target", default="/usr/share/common-licenses/GPL-3")
    parser.add_argument("--cache", default="results/pretrained")
    args = parser.parse_args(argv)
    seeds = 1 if args.smoke else args.seeds
    if args.smoke:
        args.train_size = 32
    presets = ["resnet", "vit"] + (["llama"] if Path(args.lm_target).is_file() else [])
    for preset in presets:
        pre = ["pretrain", "--preset", preset, "--out", args.cache, "--no-progress"]
        if args.smoke:  # one epoch, and for the images not 30 distorted copies: seconds
            pre += ["--epochs", "1"] + ([] if preset == "llama" else ["--data-opt", "classes=[0, 1, 2, 3, 4]"])
        started = time.perf_counter()
        if main(pre):
            sys.exit(f"recede {' '.join(pre)} failed")
        seconds = time.perf_counter() - started
        written = Path(args.cache) / f"{checkpoint_name(settings(build_parser().parse_args(pre)))}.safetensors"
        spec = PRESETS[preset]
        common = [
            "--model",
            spec["model"],
            *[f"--model-opt={o}" for o in spec["model_opt"]],
            "--epochs",
            str(1 if args.smoke else args.lm_epochs if preset == "llama" else args.epochs),
            "--batch-size",
            str(spec["batch_size"]),
            *OPTIMIZER[preset],
        ]
        if preset == "llama":
            common += ["--data", "text", "--data-opt", f"path={args.lm_target}", "--data-opt", "seq_len=64"]
            column, init = "test bits/byte", ["--init", str(written)]
        else:
            target = TARGET | {"train_size": args.train_size}
            common += ["--data", "digits", *[f"--data-opt={k}={v}" for k, v in target.items()]]
            column, init = "test acc", ["--init", str(written), "--init-skip", "heads.*"]
        scratch = f"random, lr {SCRATCH_LR[preset]}"
        rows: dict[str, list[float]] = {"fine-tuned": [], "random": [], scratch: []}
        for seed in range(seeds):
            rows["fine-tuned"].append(quality([*common, "--seed", str(seed), *init], column))
            rows["random"].append(quality([*common, "--seed", str(seed)], column))
            rows[scratch].append(quality([*common, "--seed", str(seed), "--lr", SCRATCH_LR[preset]], column))
        for label, values in rows.items():
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            print(
                f"RESULT {preset} {label}: {column} {statistics.mean(values):.3f} ± {sd:.3f} "
                f"over {len(values)} seeds {[round(v, 3) for v in values]}; pretrain call {seconds:.1f} s"
            )


if __name__ == "__main__":
    main_()
