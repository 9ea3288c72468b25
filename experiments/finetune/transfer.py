"""Does a ``recede pretrain`` source checkpoint transfer?  BP fine-tuned from it vs BP from random
weights on the target task, per model, over seeds (docs/finetune.md).

Source: digits 0-4 (``recede pretrain --preset resnet|vit``); target: digits 5-9, the first
``--train-size`` training images, the same model and optimizer.  ``--init-skip 'heads.*'``: every
head (the final classifier included) starts fresh; the blocks start from the checkpoint.
Prints, per model, the pretraining time and the target test accuracy (mean ± sd over seeds).

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
from recede.pretrain import PRESETS, checkpoint_name, settings

TARGET = {"resnet": ["--lr", "0.01", "--momentum", "0.9"], "vit": ["--optimizer", "adam", "--lr", "0.001"]}


def accuracy(args: list[str]) -> float:
    with tempfile.TemporaryDirectory() as out:
        status = main(["train", *args, "--out", out, "--no-progress", "--lr-decay", "1"])
        if status:
            sys.exit(f"recede train {' '.join(args)} failed ({status})")
        return float(json.loads((Path(out) / "metrics.json").read_text())["rows"][0]["test acc"])


def main_(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="one seed, one epoch, seconds")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-size", type=int, default=50)
    parser.add_argument("--cache", default="results/pretrained")
    args = parser.parse_args(argv)
    seeds, epochs = (1, 1) if args.smoke else (args.seeds, args.epochs)
    for preset in ("resnet", "vit"):
        pre = ["pretrain", "--preset", preset, "--out", args.cache, "--no-progress"]
        if args.smoke:
            pre += ["--epochs", "1"]
        started = time.perf_counter()
        if main(pre):
            sys.exit(f"recede {' '.join(pre)} failed")
        seconds = time.perf_counter() - started
        written = Path(args.cache) / f"{checkpoint_name(settings(build_parser().parse_args(pre)))}.safetensors"
        spec = PRESETS[preset]
        common = ["--model", spec["model"], *[f"--model-opt={o}" for o in spec["model_opt"]], "--data", "digits",
                  "--data-opt", "classes=[5, 6, 7, 8, 9]", "--data-opt", f"train_size={args.train_size}",
                  "--epochs", str(epochs), "--batch-size", "32", *TARGET[preset]]
        rows = {"fine-tuned": [], "random": []}
        for seed in range(seeds):
            rows["fine-tuned"].append(accuracy([*common, "--seed", str(seed), "--init",
                                                str(written), "--init-skip", "heads.*"]))
            rows["random"].append(accuracy([*common, "--seed", str(seed)]))
        for label, values in rows.items():
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            print(f"RESULT {preset} {label}: test acc {statistics.mean(values):.3f} ± {sd:.3f} "
                  f"over {len(values)} seeds {[round(v, 3) for v in values]}; pretrain call {seconds:.1f} s")


if __name__ == "__main__":
    main_()
