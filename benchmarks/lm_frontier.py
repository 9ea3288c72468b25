"""The language-model frontier of docs/language-models.md: ``recede compare`` once per seed, then
mean ± std over seeds.

A tiny GPT-2 (default 4 layers, width 64, 2 heads, byte-level, context 512) trains with each
method on the pinned stdlib corpus (``recede.data.text``) for ``--steps`` steps of Adam (one
epoch: the training windows' stride is chosen so that the epoch has that many batches), then
``recede compare`` measures every method as the CLI does.  Checkpointed BP computes BP's
gradient exactly (tests/test_language.py checks the trained bits per byte agree), so it is not
trained again: ``recede bench`` measures its memory and time against BP on the same model and
batch, and its row takes BP's bits per byte.  Each seed's runs go to ``OUT/seed-S`` and are
skipped when their ``metrics.json`` exists, so an interrupted run resumes.
The summary, ``OUT/frontier.json``, ``OUT/frontier.md`` and ``OUT/frontier.png``, gives per
method the mean ± std over seeds of validation bits per byte; memory: the headline ``real MiB``
and ``real / BP``, the real peak of a step as ``recede compare`` and ``recede bench`` pay it
(parameters, buffers and Adam's state plus the peak bytes the step allocates: activations,
gradients, temporaries, recomputation), and as its breakdown ``saved MiB`` and ``saved / BP``
(the peak bytes saved for backward); step time relative to BP, cos θ to BP's gradient and
tokens/s; and which methods meet the target of issue 12 (at most half of BP's saved activations
within 5 % of BP's bits per byte), and which meet it in real memory.  A seed folder written
before the real peak was measured gives n/a in the real columns.

    python benchmarks/lm_frontier.py --out results/lm-frontier [--seeds 0 1 2] [--steps 1000]
    python benchmarks/lm_frontier.py --smoke     # tiny sizes, this file as the corpus: checks it runs
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from recede import data
from recede.cli import main as recede_main
from recede.runs.plots import figure
from recede.runs.reports import markdown_table, write_json

METHODS = ["bp", "ff", "mpc:2", "mpc:3", "loco:3", "bpm-ff"]
MEASURES = ["test bits/byte", "real ratio", "real MiB", "saved ratio", "saved MiB", "time ratio", "cos θ", "tokens/s"]


def memory_columns(row: dict, bp: dict) -> dict:
    """``real MiB``, ``real ratio``, ``saved MiB``, ``saved ratio`` of a ``compare`` or ``bench`` row,
    ratios to ``bp`` (BP's row of the same command).  The real ones are None in a row written
    before the real peak was measured (its ``memory ratio`` was then the saved one)."""
    real, bp_real = row.get("real MiB"), bp.get("real MiB")
    return {
        "real MiB": real,
        "real ratio": real / bp_real if real is not None and bp_real else None,
        "saved MiB": row["saved MiB"],
        "saved ratio": row["saved MiB"] / bp["saved MiB"],
    }


def workload_argv(args: argparse.Namespace, seed: int, stride: int) -> list[str]:
    """The model, data and optimizer options every command of one seed shares."""
    model = {"n_layer": args.layers, "n_embd": args.width, "n_head": args.heads}
    corpus = [] if args.corpus is None else ["--data-opt", f"path={args.corpus}"]
    return [
        "--model",
        "gpt2",
        "--data",
        "text",
        *corpus,
        "--data-opt",
        f"seq_len={args.seq_len}",
        "--data-opt",
        f"stride={stride}",
        *[a for k, v in model.items() for a in ("--model-opt", f"{k}={v}")],
        "--batch-size",
        str(args.batch),
        "--optimizer",
        "adam",
        "--lr",
        str(args.lr),
        "--threads",
        "1",
        "--seed",
        str(seed),
        "--no-progress",
    ]


def run(argv: list[str], metrics: Path) -> dict:
    """``recede ARGV`` unless ``metrics`` already exists; its contents."""
    if not metrics.exists():
        print("recede " + " ".join(argv), flush=True)
        if recede_main(argv) != 0:
            raise SystemExit(f"recede {argv[0]} failed")
    return json.loads(metrics.read_text())


def seed_rows(args: argparse.Namespace, seed: int, stride: int) -> dict:
    """``recede compare`` of the trained methods, with checkpointed BP's row from ``recede bench``."""
    folder, common = args.out / f"seed-{seed}", workload_argv(args, seed, stride)
    compared = run(
        [
            "compare",
            *common,
            "--epochs",
            "1",
            "--methods",
            *args.methods,
            "--bpm-period",
            str(args.bpm_period),
            "--bpm-samples",
            str(args.bpm_samples),
            "--bpm-micro-batch",
            "1",
            "--out",
            str(folder / "compare"),
        ],
        folder / "compare" / "metrics.json",
    )
    benched = run(
        ["bench", *common, "--methods", "ckpt", "--out", str(folder / "bench")], folder / "bench" / "metrics.json"
    )
    bp = next(r for r in compared["rows"] if r["method"] == "BP")
    bench_bp = next(r for r in benched["rows"] if r["method"] == "BP")
    ckpt = next(r for r in benched["rows"] if r["method"].startswith("BP+ckpt"))
    ckpt_row = {
        "method": ckpt["method"],
        "test bits/byte": bp["test bits/byte"],
        "cos θ": 1.0,
        **memory_columns(ckpt, bench_bp),
        "time ratio": ckpt["time ratio"],
        "tokens/s": ckpt["tokens/s"],
    }
    rows = [r | memory_columns(r, bp) for r in compared["rows"]]
    return {"rows": [rows[0], ckpt_row, *rows[1:]], "data": compared["data"]}


def summarise(runs: list[dict]) -> list[dict]:
    """Per method (in the runs' order): mean and std over seeds of each measure."""
    rows = []
    for method in [r["method"] for r in runs[0]["rows"]]:
        per_seed = [next(r for r in run["rows"] if r["method"] == method) for run in runs]
        row = {"method": method, "seeds": len(per_seed)}
        for measure in MEASURES:
            if any(r.get(measure) is None for r in per_seed):  # not measured in every seed
                row[measure] = row[f"{measure} std"] = None
                continue
            values = [float(r[measure]) for r in per_seed]
            row[measure] = statistics.fmean(values)
            row[f"{measure} std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


def meets_target(rows: list[dict], memory: float = 0.5, slack: float = 0.05, by: str = "saved ratio") -> list[str]:
    """Methods at ≤ ``memory`` × BP's memory within ``slack`` of BP's bits per byte, memory being
    ``by``: ``"saved ratio"`` (saved activations, issue 12's target) or ``"real ratio"`` (the real
    peak; a method without one is left out)."""
    bp = next(r for r in rows if r["method"] == "BP")["test bits/byte"]
    return [
        r["method"]
        for r in rows
        if r["method"] != "BP" and r[by] is not None and r[by] <= memory and r["test bits/byte"] <= (1 + slack) * bp
    ]


def plot(rows: list[dict], path: Path, title: str) -> None:
    with figure(path, 1, 3, figsize=(14, 4), sharey=True) as (fig, axes):
        for ax, cost, name in (
            (axes[0], "real ratio", "real peak memory / BP"),
            (axes[1], "saved ratio", "saved activations / BP"),
            (axes[2], "time ratio", "step time / BP"),
        ):
            for i, row in enumerate(rows):
                if row[cost] is None:  # no real peak in these runs
                    continue
                ax.errorbar(
                    row[cost],
                    row["test bits/byte"],
                    xerr=row[f"{cost} std"],
                    yerr=row["test bits/byte std"],
                    fmt="o",
                    color=f"C{i % 10}",
                    capsize=3,
                )
                ax.annotate(
                    row["method"],
                    (row[cost], row["test bits/byte"]),
                    fontsize=8,
                    xytext=(4, 4),
                    textcoords="offset points",
                )
            if all(row[cost] is None for row in rows):
                ax.text(0.5, 0.5, "not measured in these runs", ha="center", transform=ax.transAxes)
            ax.set(xlabel=name, title=title if ax is axes[0] else "")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("validation bits per byte (↓ better)")


def cell(row: dict, measure: str, digits: int) -> str:
    """``mean ± std`` of a summary row, n/a where it was not measured."""
    if row[measure] is None:
        return "n/a"
    return f"{row[measure]:.{digits}f} ± {row[f'{measure} std']:.{digits}f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results folder (default results/lm-frontier; a new temporary folder with --smoke)",
    )
    p.add_argument("--corpus", default=None, help="a text file or folder (default: the pinned stdlib corpus)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--bpm-period", type=int, default=200)
    p.add_argument("--bpm-samples", type=int, default=16)
    p.add_argument(
        "--smoke",
        action="store_true",
        help="one seed, 2 steps of a GPT-2 of 3 layers × 16 on 16-byte windows: checks the script runs",
    )
    args = p.parse_args()
    if args.smoke:
        args.seeds, args.steps, args.seq_len, args.layers, args.width = [0], 2, 16, 3, 16
        args.bpm_period, args.bpm_samples = 1, 2
    args.out = args.out or (
        Path(tempfile.mkdtemp(prefix="lm-frontier-smoke-")) if args.smoke else Path("results/lm-frontier")
    )
    if args.smoke and args.corpus is None:  # this script's own text: a validation split of ~50 windows
        args.out.mkdir(parents=True, exist_ok=True)
        args.corpus = str(args.out / "corpus.txt")
        Path(args.corpus).write_text(Path(__file__).read_text())

    task = data.load("text", seq_len=args.seq_len, **({} if args.corpus is None else {"path": args.corpus}))
    stride = (task.info["train tokens"] - args.seq_len) // (args.steps * args.batch - 1)
    runs = [seed_rows(args, seed, stride) for seed in args.seeds]
    rows = summarise(runs)
    target, real_target = meets_target(rows), meets_target(rows, by="real ratio")
    title = (
        f"GPT-2 {args.layers}×{args.width}, context {args.seq_len}, batch {args.batch}, "
        f"{args.steps} steps, {len(runs)} seeds"
    )
    plot(rows, args.out / "frontier.png", title)
    write_json(
        args.out / "frontier.json",
        {
            "settings": vars(args) | {"out": str(args.out), "stride": stride},
            "data": runs[0]["data"],
            "rows": rows,
            "meets target": target,
            "meets target in real memory": real_target,
        },
    )
    table = [
        {
            "method": r["method"],
            "val bits/byte": cell(r, "test bits/byte", 3),
            "real MiB": cell(r, "real MiB", 1),
            "real / BP": cell(r, "real ratio", 2),
            "saved MiB": f"{r['saved MiB']:.1f}",
            "saved / BP": cell(r, "saved ratio", 2),
            "time / BP": cell(r, "time ratio", 2),
            "cos θ": cell(r, "cos θ", 3),
            "tokens/s": cell(r, "tokens/s", 0),
        }
        for r in rows
    ]
    text = (
        f"# {title}\n\ncorpus {runs[0]['data']['corpus']}, sha256 {runs[0]['data']['sha256'][:16]}…\n\n"
        f"{markdown_table(table, list(table[0]))}\n\nmean ± std over seeds {args.seeds}. BP+ckpt "
        f"computes BP's gradient, so its bits per byte are BP's; its memory and time are measured by "
        f"recede bench on the same model and batch. real MiB, real / BP: the real peak of a step "
        f"(parameters, buffers, Adam's state and the peak bytes the step allocates); saved MiB, "
        f"saved / BP: the part of it saved for backward. "
        f"At ≤ 0.5× BP's saved activations within 5 % of BP's bits per byte: "
        f"{', '.join(target) if target else 'none'}; at ≤ 0.5× BP's real peak: "
        f"{', '.join(real_target) if real_target else 'none'}.\n\n![frontier](frontier.png)\n"
    )
    (args.out / "frontier.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
