"""Long context: real peak memory, saved activations and step time against sequence length for
BP, ckpt and MPC(h) on a GPT-2, and where activations overtake the training state.

For each sequence length S (default 256 … 4096) one batch of real text (the pinned stdlib
corpus, byte-level) goes through one step of each method, after a warm-up step:

* **real MiB**, **real / BP** — the headline: the real peak of the step as a user pays it
  (:func:`recede.measure.usage.measure_paid`): parameters, buffers and Adam's state (made by one
  Adam step at learning rate 0, so the weights stay the seed's) plus the peak bytes the step
  allocates above them, ``.grad`` cleared first so the gradients count (``torch.profiler``'s
  allocation events on a CPU, ``max_memory_allocated`` on CUDA);
* **saved MiB** — the breakdown: the peak bytes saved for backward (:mod:`recede.measure.memory`'s
  meter: parameters excluded, de-duplicated by storage), plus the CUDA peak on a GPU;
* unless ``--no-timing``, the median step time over interleaved repeats
  (``recede.measure.usage.interleaved_medians``).

The *training state* is what does not depend on S: parameters, their gradients and Adam's two
moments, 4 × the trainable parameter bytes.  From a least-squares fit of log saved memory against
log S the script prints each method's exponent and the length at which its saved activations
equal the training state.  ``--replot`` of a JSON written before the real peak was measured shows
its real columns as n/a.

Writes ``OUT/long_context.json``, ``OUT/long_context.md`` and ``OUT/long_context.png``.  Nothing
is asserted: read the numbers.

    python benchmarks/long_context.py --out results/long-context [--lengths 256 512 1024 2048 4096]
    python benchmarks/long_context.py --out results/long-context-small --preset small --vocab 50257 \\
        --lengths 128 256 512 --no-timing      # GPT-2 small's state and activations, memory only
    python benchmarks/long_context.py --preset small --vocab 50257 --lengths 256 512 1024 \\
        --device cuda --bf16                   # on a GPU: GPT-2 small at 1024 in bf16, CUDA peak too
    python benchmarks/long_context.py --smoke  # tiny sizes, a temporary folder: checks the script runs
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import torch
from matplotlib.ticker import NullLocator

from recede import data, models
from recede.measure.usage import interleaved_medians, measure_paid, timed_step
from recede.methods import build_method, parse_method
from recede.runs.plots import figure
from recede.runs.reports import markdown_table, write_json

METHODS = ["bp", "ckpt", "ff", "mpc:2", "mpc:3"]
MiB = 2**20


def text_batch(seq_len: int, batch: int, device: torch.device) -> torch.Tensor:
    """The first ``batch`` windows of ``seq_len`` bytes of the stdlib corpus."""
    task = data.load("text", seq_len=seq_len)
    return torch.stack([task.train[i][0] for i in range(batch)]).to(device)


def measure_length(args: argparse.Namespace, seq_len: int, device: torch.device) -> list[dict]:
    """One row per method at one sequence length."""
    torch.manual_seed(0)
    net = models.build(
        "gpt2",
        vocab_size=args.vocab,
        n_positions=max(args.lengths),
        preset=args.preset,
        attention=args.attention,
        **{
            k: v for k, v in (("n_layer", args.layers), ("n_embd", args.width), ("n_head", args.heads)) if v is not None
        },
    ).to(device)
    state = 4 * sum(p.numel() * p.element_size() for p in net.parameters() if p.requires_grad)
    x = text_batch(seq_len, args.batch, device)
    methods = [build_method(net, spec) for spec in args.methods]
    seconds = [math.nan] * len(methods)
    precision = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    if not args.no_timing:
        runs = {spec: timed_step(m, net, x, x) for spec, m in zip(args.methods, methods)}
        with precision:
            seconds = list(interleaved_medians(runs, args.repeats, warmup=1, device=device).values())
    # Adam's two moments exist from its first step on; at learning rate 0 it leaves the weights as they are
    optimizer = torch.optim.Adam(net.parameters(), lr=0.0)
    with precision:
        methods[0].backward(x, x)
    optimizer.step()
    rows = []
    for spec, method, step in zip(args.methods, methods, seconds):
        with precision:
            net.zero_grad(set_to_none=True)
            method.backward(x, x)  # warm-up
            paid = measure_paid(method, net, x, x, optimizer, device)
        memory, real = paid.step, paid.real_peak_bytes
        rows.append(
            {
                "S": seq_len,
                "method": parse_method(spec).label,
                "T": net.T,
                "real MiB": None if real is None else real / MiB,
                "saved MiB": memory.saved_peak_bytes / MiB,
                "state MiB": state / MiB,
                "saved / state": memory.saved_peak_bytes / state,
                "cuda peak MiB": None if memory.cuda_peak_bytes is None else memory.cuda_peak_bytes / MiB,
                "s/step": step,
                "tokens/s": args.batch * seq_len / step,
            }
        )
        print(
            f"S = {seq_len:5d}  {rows[-1]['method']:10s} real {rows[-1]['real MiB']:9.1f} MiB  "
            f"saved {rows[-1]['saved MiB']:9.1f} MiB  step {step:8.3f} s",
            flush=True,
        )
    net.zero_grad(set_to_none=True)
    return rows


def ratio(a: float | None, b: float | None) -> float:
    """``a / b``, NaN where either is missing (a JSON written before the real peak was measured)."""
    return a / b if a is not None and b else math.nan


def add_ratios(rows: list[dict]) -> None:
    """Give every row its real and saved memory over BP's at the same S (NaN, shown n/a, where
    there is no BP row or no real peak)."""
    bp = {r["S"]: r for r in rows if r["method"] == "BP"}
    for row in rows:
        base = bp.get(row["S"], {})
        row["real / BP"] = ratio(row.get("real MiB"), base.get("real MiB"))
        row["saved / BP"] = ratio(row["saved MiB"], base.get("saved MiB"))


def growth(rows: list[dict]) -> list[dict]:
    """Per method: the exponent of saved memory in S and the S where it equals the training state."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        lengths = np.array([r["S"] for r in mine], dtype=float)
        saved = np.array([r["saved MiB"] for r in mine])
        slope, intercept = np.polyfit(np.log(lengths), np.log(saved), 1) if len(mine) > 1 else (math.nan, math.nan)
        state = mine[0]["state MiB"]
        crossing = math.exp((math.log(state) - intercept) / slope) if len(mine) > 1 else math.nan
        bp = [r for r in rows if r["method"] == "BP"]
        out.append(
            {
                "method": method,
                "memory exponent in S": slope,
                "S where saved = state": crossing,
                "real / BP at longest S": ratio(mine[-1].get("real MiB"), bp[-1].get("real MiB")) if bp else math.nan,
                "saved / BP at longest S": mine[-1]["saved MiB"] / bp[-1]["saved MiB"] if bp else math.nan,
                "time / BP at longest S": mine[-1]["s/step"] / bp[-1]["s/step"] if bp else math.nan,
            }
        )
    return out


def plot(rows: list[dict], path: Path, title: str, timing: bool) -> None:
    with figure(path, 1, 2 if timing else 1, figsize=(11 if timing else 6, 4)) as (fig, axes):
        axes = np.atleast_1d(axes)
        for i, method in enumerate(dict.fromkeys(r["method"] for r in rows)):
            mine = [r for r in rows if r["method"] == method]
            lengths = [r["S"] for r in mine]
            real = [r.get("real MiB") for r in mine]
            if all(v is not None for v in real):
                axes[0].plot(lengths, real, "o-", color=f"C{i}", label=f"{method} real")
            axes[0].plot(
                lengths, [r["saved MiB"] for r in mine], "x--", color=f"C{i}", alpha=0.6, label=f"{method} saved"
            )
            if timing:
                axes[1].plot(lengths, [r["s/step"] for r in mine], "o-", color=f"C{i}", label=method)
        lengths = sorted({r["S"] for r in rows})
        axes[0].plot(
            lengths, [rows[0]["state MiB"]] * len(lengths), "k--", label="training state (params, grads, Adam)"
        )
        axes[0].set(
            xscale="log",
            yscale="log",
            xlabel="sequence length S",
            ylabel="MiB: real peak (solid), saved for backward (dashed)",
            title=title,
        )
        axes[0].legend(fontsize=8)
        if timing:
            axes[1].set(xscale="log", yscale="log", xlabel="sequence length S", ylabel="seconds per step")
        for ax in axes:
            ax.set_xticks(lengths, [str(s) for s in lengths])
            ax.xaxis.set_minor_locator(NullLocator())
            ax.grid(alpha=0.3, which="both")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results folder (default results/long-context; a new temporary folder with --smoke)",
    )
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--preset", default="tiny", help="gpt2 preset (small: GPT-2 small, ignores the sizes)")
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--vocab", type=int, default=256, help="256: byte level; 50257: GPT-2's own vocabulary size")
    p.add_argument(
        "--attention",
        default="sdpa",
        choices=["sdpa", "eager"],
        help="sdpa: fused attention, O(S) saved; eager: saved attention weights, O(S²)",
    )
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--no-timing", action="store_true", help="memory only (one step per method)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true", help="run the steps under torch.autocast(bfloat16)")
    p.add_argument(
        "--replot", action="store_true", help="measure nothing: redraw the plot and tables from OUT/long_context.json"
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="a GPT-2 of 3 layers × 16 at S = 16 and 32, one repeat: checks the script runs",
    )
    args = p.parse_args()
    if args.smoke:
        args.lengths, args.layers, args.width, args.heads, args.repeats = [16, 32], 3, 16, 2, 1
        args.preset = "tiny"
    args.out = args.out or (
        Path(tempfile.mkdtemp(prefix="long-context-smoke-")) if args.smoke else Path("results/long-context")
    )
    if args.replot:
        saved = json.loads((args.out / "long_context.json").read_text())
        vars(args).update({k: v for k, v in saved["settings"].items() if k not in ("out", "replot")})
        rows = saved["rows"]
    if args.preset == "small":
        args.layers = args.width = args.heads = None
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if not args.replot:
        rows = [row for seq_len in args.lengths for row in measure_length(args, seq_len, device)]
    add_ratios(rows)
    fits = growth(rows)
    T = rows[0]["T"]
    shape = "GPT-2 small" if args.preset == "small" else f"GPT-2 {args.layers}×{args.width}"
    title = (
        f"{shape} (T = {T}), {args.attention} attention, vocab {args.vocab}, batch {args.batch}, "
        f"{'bf16 autocast' if args.bf16 else 'fp32'}, {device}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    plot(rows, args.out / "long_context.png", title, timing=not args.no_timing)
    settings = {k: v for k, v in vars(args).items() if k != "replot"} | {"out": str(args.out)}
    write_json(
        args.out / "long_context.json", {"settings": settings, "device": str(device), "rows": rows, "fits": fits}
    )
    columns = [
        "S",
        "method",
        "real MiB",
        "real / BP",
        "saved MiB",
        "saved / BP",
        "saved / state",
        "s/step",
        "tokens/s",
    ] + (["cuda peak MiB"] if device.type == "cuda" else [])
    text = (
        f"# Long context: {title}\n\ntraining state (params + grads + Adam moments): "
        f"{rows[0]['state MiB']:.1f} MiB.  real MiB: the step's real peak (parameters, buffers and "
        f"Adam's state plus the peak bytes the step allocates: activations, gradients, temporaries); "
        f"saved MiB: the part of it saved for backward.\n\n{markdown_table(rows, columns)}\n\n"
        f"{markdown_table(fits, list(fits[0]))}\n\n![long context](long_context.png)\n"
    )
    (args.out / "long_context.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
