"""GPU benchmark: step time and CUDA peak memory of BP, ckpt, FF, MPC(2), MPC(5) and BPM-FF.

Models, built with ``pretrained=False`` and wrapped with :func:`recede.wrap`:

* ``resnet50`` — timm's ResNet-50 (Paper B), 224 × 224 inputs, batch 64, 1000 classes;
* ``gpt2`` — Hugging Face ``GPT2LMHeadModel`` with GPT-2 small's configuration (124 M
  parameters), sequences of 1024 tokens, batch 8, its own shifted next-token loss.  Skipped,
  with the reason printed, when transformers or recede's Hugging Face family is missing.

Each runs in fp32 and in bf16 (``torch.autocast``), eager and compiled (``net.compile()``: every
block and head).  For each method: the median step time (``.grad`` cleared, forward and
gradients, no optimizer step; rounds of all methods interleaved, after warm-up rounds in which
compilation happens) and the CUDA peak bytes allocated and reserved during one step (after
``torch.cuda.empty_cache()``; parameters and gradients included, no optimizer state), each also
as a ratio to BP's.  BPM-FF is timed between refreshes: its offset is refreshed in the first
warm-up step (B' = 16 samples in micro-batches of 8) and not again.  Writes ``gpu.json`` and ``gpu.md`` to ``--out``.

    python benchmarks/gpu.py                 # on a CUDA machine (one command; ~10 min on an H100)
    python benchmarks/gpu.py --smoke         # tiny models on whatever device is there (CPU: no peaks),
                                             # bf16 eager only, results in a temporary folder
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

import recede
from recede.measure.memory import cuda_peaks
from recede.measure.usage import interleaved_medians, timed_step
from recede.methods import build_method, parse_method
from recede.runs.reports import markdown_table, write_json

METHODS = ("bp", "ckpt", "ff", "mpc:2", "mpc:5", "bpm-ff")
DTYPES = {"fp32": None, "bf16": torch.bfloat16}
COLUMNS = [
    "model",
    "dtype",
    "mode",
    "method",
    "ms / step",
    "time / BP",
    "peak alloc MiB",
    "alloc / BP",
    "peak reserved MiB",
    "reserved / BP",
]
Batch = tuple[recede.BlockNet, torch.Tensor, torch.Tensor]


def resnet50(smoke: bool, device: torch.device) -> Batch:
    import timm

    sizes = dict(layers=(1, 2, 1, 1), channels=(4, 8, 8, 16)) if smoke else {}  # T = 5: MPC(5) runs
    batch, side, classes = (2, 32, 10) if smoke else (64, 224, 1000)
    model = timm.create_model("resnet50", pretrained=False, num_classes=classes, **sizes)
    x = torch.randn(batch, 3, side, side, device=device)
    return recede.wrap(model.to(device)), x, torch.randint(0, classes, (batch,), device=device)


def gpt2(smoke: bool, device: torch.device) -> Batch:
    import transformers

    sizes = dict(n_layer=5, n_embd=32, n_head=2, vocab_size=64, n_positions=16) if smoke else {}
    config = transformers.GPT2Config(**sizes)  # the defaults are GPT-2 small
    batch, tokens = (2, 16) if smoke else (8, 1024)
    model = transformers.GPT2LMHeadModel(config).to(device)
    ids = torch.randint(0, config.vocab_size, (batch, tokens), device=device)
    return recede.wrap(model), ids, ids


MODELS: dict[str, Callable[[bool, torch.device], Batch]] = {"resnet50": resnet50, "gpt2": gpt2}


def measure_group(
    make: Callable[[], Batch],
    dtype: torch.dtype | None,
    compiled: bool,
    backend: str,
    repeats: int,
    warmup: int,
    device: torch.device,
) -> list[dict]:
    """Rows of every method for one model, precision and mode."""
    torch.manual_seed(0)
    net, x, y = make()
    if compiled:
        net.compile(backend=backend)
    micro = min(8, len(x))  # BPM-FF: B' = 2 b' samples drawn from two copies of the batch
    pool = TensorDataset(torch.cat([x, x]), torch.cat([y, y]))
    methods = {
        m: build_method(
            net, m, refresh_data=pool, batch_size=len(x), period=10**6, offset_samples=2 * micro, micro_batch=micro
        )
        for m in METHODS
    }
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    with autocast:
        steps = {m: timed_step(method, net, x, y) for m, method in methods.items()}
        seconds = interleaved_medians(steps, repeats, warmup=warmup, device=device)
        rows = []
        for m, step in steps.items():
            row = {"method": parse_method(m).label, "ms / step": 1e3 * seconds[m]}
            if device.type == "cuda":
                torch.cuda.empty_cache()
                _, allocated, reserved = cuda_peaks(step, device)
                row |= {"peak alloc MiB": allocated / 2**20, "peak reserved MiB": reserved / 2**20}
            rows.append(row)
    bp = rows[0]
    for row in rows:
        row["time / BP"] = row["ms / step"] / bp["ms / step"]
        if "peak alloc MiB" in row:
            row["alloc / BP"] = row["peak alloc MiB"] / bp["peak alloc MiB"]
            row["reserved / BP"] = row["peak reserved MiB"] / bp["peak reserved MiB"]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny models, 1 repeat, bf16 eager unless --dtypes/--modes: checks the script runs",
    )
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument(
        "--dtypes", nargs="+", choices=list(DTYPES), default=None, help="default: fp32 and bf16 (bf16 with --smoke)"
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=["eager", "compiled"],
        default=None,
        help="default: eager and compiled (eager with --smoke)",
    )
    parser.add_argument(
        "--backend", default=None, help="torch.compile backend (default: inductor; aot_eager with --smoke)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 10; 1 with --smoke)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results folder (default results/gpu; a new temporary folder with --smoke)",
    )
    args = parser.parse_args(argv)
    args.dtypes = args.dtypes or (["bf16"] if args.smoke else list(DTYPES))
    args.modes = args.modes or (["eager"] if args.smoke else ["eager", "compiled"])
    args.out = args.out or (Path(tempfile.mkdtemp(prefix="gpu-smoke-")) if args.smoke else Path("results/gpu"))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.smoke:
        print(
            "benchmarks/gpu.py: no CUDA GPU here; run it on a GPU machine, or with --smoke to check it on the CPU",
            file=sys.stderr,
        )
        return 2
    backend = args.backend or ("aot_eager" if args.smoke else "inductor")
    repeats = args.repeats or (1 if args.smoke else 10)
    warmup = 1 if args.smoke else 3
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    rows: list[dict] = []
    skipped: dict[str, str] = {}
    # ResNet-50's 16 bottlenecks share one forward in more than Dynamo's default 8 shapes and
    # strides; past that limit it would silently run the rest eager.
    with torch._dynamo.config.patch(recompile_limit=64):
        for model in args.models:

            def make(model: str = model) -> Batch:
                return MODELS[model](args.smoke, device)

            try:
                make()
            except (ImportError, ValueError) as err:
                skipped[model] = f"{type(err).__name__}: {err}"
                print(f"skipping {model}: {skipped[model]}")
                continue
            for mode in args.modes:
                for dtype in args.dtypes:
                    print(f"{model} {dtype} {mode} ...", flush=True)
                    group = {"model": model, "dtype": dtype, "mode": mode}
                    rows += [
                        group | row
                        for row in measure_group(
                            make, DTYPES[dtype], mode == "compiled", backend, repeats, warmup, device
                        )
                    ]
    meta = {
        "device": name,
        "torch": torch.__version__,
        "backend": backend,
        "repeats": repeats,
        "warmup": warmup,
        "smoke": args.smoke,
    }
    write_json(args.out / "gpu.json", {**meta, "rows": rows, "skipped": skipped})
    header = (
        f"{name}, torch {torch.__version__}, compiled with {backend}; medians of {repeats} "
        f"interleaved rounds after {warmup} warm-up rounds" + (" (smoke run)" if args.smoke else "")
    )
    table = markdown_table(rows, COLUMNS)
    (args.out / "gpu.md").write_text(
        header + "\n\n" + table + "\n" + "".join(f"\nskipped {m}: {why}\n" for m, why in skipped.items())
    )
    print(header + "\n\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
