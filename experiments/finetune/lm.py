"""Language-model fine-tuning (issue 23, item 5): a Llama-layout LM pretrained on the standard
library's source (``recede pretrain --preset llama``, deepened to ``--layers`` layers so that
MPC(2) is neither FF nor BP), fine-tuned on an English text (default the GPL-3 text Debian
ships, as experiments/finetune/transfer.py) in full and with LoRA, by BP, BP with
checkpointing, FF, MPC(h=2) and BP-modified FF (the default rule, or ``--bpm-rule paper``:
Paper B's scalars), over seeds.

Each regime is one ``recede compare`` call with ``--init`` (every method and seed starts from the
checkpoint; the LoRA regime builds ``adapter=lora`` and takes the plain checkpoint's weights into
the adapted layers, the LoRA tensors start fresh).  Prints one Markdown table per regime: test
bits per byte, saved (activations kept for backward) and real (the step's whole peak) memory,
and time per step as paid (``--clock cpu``: this process's CPU seconds, steady on a shared
CPU), each mean ± sd over the seeds; the full reports are under ``--out``.

    PYTHONPATH=src OMP_NUM_THREADS=1 python experiments/finetune/lm.py            # ~1 h on 2 shared cores
    PYTHONPATH=src OMP_NUM_THREADS=1 python experiments/finetune/lm.py --smoke    # seconds
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from recede.cli import build_parser, main
from recede.runs.pretrain import PRESETS, checkpoint_name, settings

METHODS = ["bp", "ckpt", "ff", "mpc:2", "bpm-ff"]
REGIMES = {
    "full": [],
    "lora": [
        "--model-opt",
        "adapter=lora",
        "--model-opt",
        "adapter_rank={rank}",
        "--model-opt",
        "adapter_alpha={alpha}",
    ],
}


def model_options(layers: int, smoke: bool) -> list[str]:
    """The llama preset's options with ``n_layer=layers`` (and a width of 16 for ``--smoke``)."""
    options = [o for o in PRESETS["llama"]["model_opt"] if not o.startswith("n_layer=")] + [f"n_layer={layers}"]
    if smoke:
        options = [o for o in options if not o.startswith(("hidden_size=", "intermediate_size="))]
        options += ["hidden_size=16", "intermediate_size=32"]
    return options


def source(args: argparse.Namespace) -> tuple[Path, list[str]]:
    """Pretrain (or reuse, cached by content hash) the source checkpoint; its path and model options."""
    options = model_options(args.layers, args.smoke)
    call = [
        "pretrain",
        "--preset",
        "llama",
        *[f"--model-opt={o}" for o in options],
        "--out",
        args.cache,
        "--no-progress",
        "--threads",
        "1",
    ]
    if args.smoke:
        call += ["--epochs", "1", "--data-opt=seq_len=16", "--data-opt=stride=65536"]
    if main(call):
        sys.exit(f"recede {' '.join(call)} failed")
    return Path(args.cache) / f"{checkpoint_name(settings(build_parser().parse_args(call)))}.safetensors", options


def fmt(row: dict, key: str, digits: int) -> str:
    value, sd = row.get(key), row.get(f"{key} sd")
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None else "")


def table(rows: list[dict]) -> list[str]:
    """Markdown rows of ``recede compare``'s metrics.json rows."""
    lines = [
        "| method | test bits/byte | saved MiB | real MiB | time ms/step (as paid) | time ratio to BP |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {fmt(r, 'test bits/byte', 3)} | {fmt(r, 'saved MiB', 3)} | "
            f"{fmt(r, 'real MiB', 3)} | {fmt(r, 'ms/step', 1)} | {fmt(r, 'time ratio', 2)} |"
        )
    return lines


def main_(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--smoke", action="store_true", help="a width-16 LM, one seed, one epoch on a few windows: seconds"
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--layers", type=int, default=4, help="transformer layers = blocks T (MPC(2) needs T > 2)")
    parser.add_argument("--lr", type=float, default=0.001, help="Adam's learning rate in both regimes")
    parser.add_argument("--rank", type=int, default=4, help="LoRA rank")
    parser.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha")
    parser.add_argument("--methods", nargs="+", default=METHODS, help=f"default: {' '.join(METHODS)}")
    parser.add_argument(
        "--bpm-rule", default="robust", choices=["robust", "paper"], help="BP-modified's rule (default robust)"
    )
    parser.add_argument("--target", default="/usr/share/common-licenses/GPL-3")
    parser.add_argument("--cache", default="results/pretrained")
    parser.add_argument("--out", default="results/finetune-lm")
    args = parser.parse_args(argv)
    if not Path(args.target).is_file():
        sys.exit(f"target text not found: {args.target} (give --target FILE)")
    checkpoint, options = source(args)
    seeds, epochs = (1, 1) if args.smoke else (args.seeds, args.epochs)
    data = [
        "--data",
        "text",
        "--data-opt",
        f"path={args.target}",
        "--data-opt",
        "seq_len=16" if args.smoke else "seq_len=64",
    ] + (["--data-opt", "stride=256"] if args.smoke else [])
    for regime, extra in REGIMES.items():
        out = Path(args.out) / regime
        call = [
            "compare",
            "--model",
            "llama",
            *[f"--model-opt={o}" for o in options],
            *[e.format(rank=args.rank, alpha=args.alpha) for e in extra],
            *data,
            "--epochs",
            str(epochs),
            "--batch-size",
            "16",
            "--optimizer",
            "adam",
            "--lr",
            str(args.lr),
            "--lr-decay",
            "1",
            "--init",
            str(checkpoint),
            "--methods",
            *args.methods,
            "--bpm-rule",
            args.bpm_rule,
            "--seeds",
            str(seeds),
            "--clock",
            "cpu",
            "--threads",
            "1",
            "--no-progress",
            "--out",
            str(out),
            "--overwrite",
        ]
        if args.smoke:
            call += ["--timing-steps", "2", "--cosine-batches", "1"]
        if main(call):
            sys.exit(f"recede {' '.join(call)} failed")
        rows = json.loads((out / "metrics.json").read_text())["rows"]
        print(f"\n### {regime} ({len(rows)} methods, {seeds} seed(s), {epochs} epoch(s)); report {out / 'report.md'}\n")
        print("\n".join(table(rows)))


if __name__ == "__main__":
    main_()
