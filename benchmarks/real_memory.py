"""Real peak memory and step time of BP, checkpointing and the horizons, each method in its own process.

For every configuration and method, a fresh Python process builds the model (same seed), runs a
warm-up step, then measures one step three ways:

* **real** — the peak bytes the step allocates above its start, from ``torch.profiler``'s
  allocation events (:func:`recede.measure.memory.allocation_peak`; on CUDA ``max_memory_allocated``,
  and ``max_memory_reserved`` beside it), plus the parameters and buffers the process holds: the
  headline figure, reported as a ratio to BP's;
* **resident** — an independent check: the rise of the process's resident-set high-water mark
  over the step (:func:`recede.measure.memory.resident_peak`), with glibc told to return freed memory at
  once (:func:`recede.measure.memory.return_freed_memory`); ``rss/real`` is the step's resident rise
  over its allocation peak (CPU only);
* **saved** — the saved-tensor meter (:mod:`recede.measure.memory`), the activation part of the
  breakdown; ``grads`` is the bytes of the gradients every method ends the step with.

Time is measured separately, in one fresh process per configuration that builds every method
and times their steps round-robin in shuffled order (:func:`recede.measure.usage.interleaved_medians`,
one warm-up round, the median of ``--repeats`` ≥ 5 rounds), so a change in the machine's load
hits all methods alike; on a CPU the clock is this process's CPU seconds (one thread), which
other jobs on a shared machine do not inflate.  Nothing is asserted: read the ratios.  ``--smoke`` measures
in this process instead (tiny configurations; a check
that the script runs, not a measurement).

Methods: ``bp``, ``ckpt`` (non-re-entrant ``torch.utils.checkpoint`` around every block but the
last: what a user writes), ``ckpt:S`` (S = round(√T) segments), ``ff``, ``mpc:2``, ``mpc:4``,
``mpc-rc:2`` and ``mpc-rc:4`` (``MPC(net, h, recompute=True)``), and ``sac``: the library's
selective checkpointing per block (:mod:`recede.core.recompute`, PyTorch's
``create_selective_checkpoint_contexts``: the outputs of matrix products, convolutions and
attention are kept, everything else — norms, activations, dropout, residual adds — is
recomputed).  For GPT-2 also ``hf-gc``: the plain ``GPT2LMHeadModel`` with
``gradient_checkpointing_enable()`` (non-re-entrant), as a user of transformers runs it.

Configurations: ``gpt2-6`` and ``gpt2-16`` (the registry's ``gpt2``, 6 or 16 layers of width
256, 4 heads, sequences of 2048 byte tokens, batch 2), ``gpt2-16-4k`` (the same at 4096
tokens: the long-context configuration), ``resnet50`` (timm's ResNet-50, T = 16,
160 × 160, batch 16).  ``--smoke`` runs tiny versions of both families in seconds.

    python benchmarks/real_memory.py [--configs gpt2-6 gpt2-16 gpt2-16-4k resnet50] [--repeats 5] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from recede import models
from recede.measure.memory import (
    SavedTensorMeter,
    allocation_peak,
    resident_peak,
    return_freed_memory,
)
from recede.measure.usage import interleaved_medians, keep_freed_memory
from recede.methods import build_method
from recede.runs.reports import markdown_table

MiB = 2**20
CONFIGS: dict[str, dict[str, Any]] = {
    "gpt2-6": dict(family="gpt2", layers=6, width=256, heads=4, seq=2048, batch=2),
    "gpt2-16": dict(family="gpt2", layers=16, width=256, heads=4, seq=2048, batch=2),
    "gpt2-16-4k": dict(family="gpt2", layers=16, width=256, heads=4, seq=4096, batch=2),
    "resnet50": dict(family="resnet50", side=160, batch=16, classes=100),
}
SMOKE: dict[str, dict[str, Any]] = {
    "gpt2-smoke": dict(family="gpt2", layers=4, width=32, heads=2, seq=64, batch=2),
    "resnet50-smoke": dict(family="resnet50", side=32, batch=2, classes=10, channels=(8, 16, 32, 64)),
}
METHODS = ["bp", "ckpt", "ckpt:S", "ff", "mpc:2", "mpc:4", "mpc-rc:2", "mpc-rc:4", "sac", "hf-gc"]


def build(config: dict[str, Any], device: torch.device) -> tuple[Any, Any, torch.Tensor, Any]:
    """``(net, hf_model or None, x, y)`` of a configuration, seeded."""
    torch.manual_seed(0)
    if config["family"] == "gpt2":
        net = models.build(
            "gpt2",
            vocab_size=256,
            n_positions=config["seq"],
            n_layer=config["layers"],
            n_embd=config["width"],
            n_head=config["heads"],
        ).to(device)
        x = torch.randint(0, 256, (config["batch"], config["seq"]), device=device)
        return net, None, x, x
    extra = {"channels": config["channels"]} if "channels" in config else {}
    net = models.build("resnet50", num_classes=config["classes"], **extra).to(device)
    x = torch.randn(config["batch"], 3, config["side"], config["side"], device=device)
    return net, None, x, torch.randint(0, config["classes"], (config["batch"],), device=device)


class TransformersCheckpointing:
    """``GPT2LMHeadModel`` with ``gradient_checkpointing_enable()``: the loss of ``labels=x``."""

    def __init__(self, config: dict[str, Any], device: torch.device) -> None:
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(0)
        hf = GPT2Config(
            vocab_size=256,
            n_positions=config["seq"],
            n_layer=config["layers"],
            n_embd=config["width"],
            n_head=config["heads"],
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=None,
            eos_token_id=None,
            attn_implementation="sdpa",
        )
        self.model = GPT2LMHeadModel(hf).to(device).train()
        self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def backward(self, x: Any, y: Any) -> float:
        loss = self.model(input_ids=x, labels=y).loss
        loss.backward()
        return float(loss.detach())


def make_method(name: str, config: dict[str, Any], net: Any, device: torch.device) -> tuple[Any, torch.nn.Module]:
    """The method and the module whose parameters it trains."""
    if name == "hf-gc":
        method = TransformersCheckpointing(config, device)
        return method, method.model
    if name == "ckpt:S":
        name = f"ckpt:{max(1, round(math.sqrt(net.T)))}"
    return build_method(net, name), net


def worker(
    config_name: str, method_name: str, configs: dict[str, dict[str, Any]], device: torch.device, check: bool = True
) -> dict:
    """One method's memory in this (fresh) process: real, resident and saved-tensor peaks (the
    last two only with ``check``: one more step)."""
    config = configs[config_name]
    net, _, x, y = build(config, device)
    method, module = make_method(method_name, config, net, device)

    def step() -> None:
        module.zero_grad(set_to_none=True)
        method.backward(x, y)

    step()  # warm-up: lazy initialisations, the profiler's start
    module.zero_grad(set_to_none=True)
    allocation_peak(lambda: None, device)
    _, allocated = allocation_peak(lambda: method.backward(x, y), device)
    reserved = None
    if device.type == "cuda":
        reserved = torch.cuda.max_memory_reserved(device)
    module.zero_grad(set_to_none=True)
    held = [*module.parameters(), *module.buffers()]
    resident, saved = None, None
    if check:
        with SavedTensorMeter(held) as meter:  # one step for the meter and the resident check
            resident = resident_peak(lambda: method.backward(x, y))[1] if device.type == "cpu" else None
            if device.type != "cpu":
                method.backward(x, y)
        saved = meter.peak_bytes
    else:
        method.backward(x, y)  # the gradients the step ends with
    persistent = sum(t.numel() * t.element_size() for t in held)
    grads = sum(p.grad.numel() * p.grad.element_size() for p in module.parameters() if p.grad is not None)
    return {
        "config": config_name,
        "method": method_name,
        "T": net.T,
        "step": allocated,
        "real": persistent + allocated,
        "resident": resident,
        "reserved": reserved,
        "saved": saved,
        "grads": grads,
        "persistent": persistent,
    }


def timing(
    config_name: str, methods: list[str], configs: dict[str, dict[str, Any]], device: torch.device, repeats: int
) -> dict[str, float]:
    """Median step seconds of every method, interleaved, in this (fresh) process."""
    keep_freed_memory()
    config = configs[config_name]
    net, _, x, y = build(config, device)
    runs = {}
    for name in methods:
        method, module = make_method(name, config, net, device)

        def step(method=method, module=module) -> None:
            module.zero_grad(set_to_none=True)
            method.backward(x, y)

        runs[name] = step
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    return interleaved_medians(runs, repeats, warmup=1, device=device, clock=clock)


def _child(argv: list[str], in_process: bool = False) -> Any:
    """Run this script with ``argv`` in a fresh process and return what it printed (JSON);
    ``in_process`` runs it here instead (``--smoke``: no fresh processes, seconds)."""
    if in_process:
        configs, device = SMOKE, torch.device(_value(argv, "--device"))
        if argv[0] == "--worker":
            return worker(argv[1], argv[2], configs, device, check="--no-check" not in argv)
        methods = argv[argv.index("--methods") + 1 : argv.index("--device")]
        return timing(argv[1], methods, configs, device, int(_value(argv, "--repeats")))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH", "")]
        ),
    }
    out = subprocess.run([sys.executable, __file__, *argv], env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", nargs="+", default=None)
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch", type=int, default=None, help="override every configuration's batch size")
    p.add_argument("--width", type=int, default=None, help="override the GPT-2 configurations' width")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny configurations, two timed rounds, all in this process (no fresh processes): "
        "checks the script end to end in about a minute",
    )
    p.add_argument(
        "--no-check",
        action="store_true",
        help="skip the third step of each memory process (the resident-set check and the "
        "saved-tensor meter): a quarter less time on the large configurations",
    )
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    p.add_argument("--worker", nargs=2, metavar=("CONFIG", "METHOD"), help=argparse.SUPPRESS)
    p.add_argument("--timing", metavar="CONFIG", help=argparse.SUPPRESS)
    args = p.parse_args()
    configs = SMOKE if args.smoke else CONFIGS
    for key in ("batch", "width"):
        if getattr(args, key) is not None:
            configs = {name: {**config, key: getattr(args, key)} for name, config in configs.items()}
    device = torch.device(args.device)
    torch.set_num_threads(1) if device.type == "cpu" else None
    if args.worker:
        if device.type == "cpu":
            return_freed_memory()  # before anything is allocated: the resident set follows allocations
        print(json.dumps(worker(*args.worker, configs, device, check=not args.no_check)))
        return
    if args.timing:
        print(json.dumps(timing(args.timing, args.methods, configs, device, args.repeats)))
        return
    chosen = args.configs or list(configs)
    common = (
        ["--device", args.device]
        + (["--smoke"] if args.smoke else [])
        + (["--no-check"] if args.no_check else [])
        + [
            f
            for key in ("batch", "width")
            if getattr(args, key) is not None
            for f in (f"--{key}", str(getattr(args, key)))
        ]
    )
    repeats = 2 if args.smoke else args.repeats
    start = time.perf_counter()
    cpu = "?"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    print(
        f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else cpu}), "
        f"torch {torch.__version__}, one thread on a CPU",
        flush=True,
    )
    all_rows = []
    for name in chosen:
        methods = [m for m in args.methods if m != "hf-gc" or configs[name]["family"] == "gpt2"]
        order = methods[:]
        random.Random(0).shuffle(order)  # memory processes in a shuffled order too
        memory = {}
        for m in order:
            memory[m] = _child(["--worker", name, m, *common], args.smoke)
            print(
                f"  {name} {m}: real {memory[m]['real'] / MiB:.1f} MiB ({time.perf_counter() - start:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
        seconds = _child(["--timing", name, "--repeats", str(repeats), "--methods", *methods, *common], args.smoke)
        # without bp in --methods the ratios to BP are left out (the ratios to ckpt stay)
        bp_mem, bp_time = memory.get("bp", {"real": math.nan}), seconds.get("bp", math.nan)
        rows = []
        for m in methods:
            r = memory[m]
            rows.append(
                {
                    "config": name,
                    "method": m,
                    "real MiB": r["real"] / MiB,
                    "real / BP": r["real"] / bp_mem["real"],
                    "time / BP": seconds[m] / bp_time,
                    "step MiB": r["step"] / MiB,
                    "rss/real": None if r["resident"] is None else r["resident"] / max(r["step"], 1),
                    "saved MiB": None if r["saved"] is None else r["saved"] / MiB,
                    "grads MiB": r["grads"] / MiB,
                    "params+buffers MiB": r["persistent"] / MiB,
                    "reserved MiB": None if r["reserved"] is None else r["reserved"] / MiB,
                    "s/step": seconds[m],
                    "T": r["T"],
                }
            )
        ckpt = next(r for r in rows if r["method"] == "ckpt")
        for r in rows:
            r["real / ckpt"] = r["real MiB"] / ckpt["real MiB"]
            r["time / ckpt"] = r["s/step"] / ckpt["s/step"]
        columns = [
            "method",
            "real MiB",
            "real / BP",
            "time / BP",
            "real / ckpt",
            "time / ckpt",
            "step MiB",
            "rss/real",
            "saved MiB",
            "grads MiB",
            "params+buffers MiB",
        ] + (["reserved MiB"] if device.type == "cuda" else [])
        print(f"\n{name}: {configs[name]}, T = {rows[0]['T']}, time: median of {repeats} interleaved rounds\n")
        print(markdown_table(rows, columns), flush=True)
        all_rows += rows
    print(f"\n{time.perf_counter() - start:.0f} s")
    if args.out:
        Path(args.out).write_text(json.dumps({"device": str(device), "cpu": cpu, "rows": all_rows}, indent=1))


if __name__ == "__main__":
    main()
