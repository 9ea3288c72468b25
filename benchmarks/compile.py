"""Compiled blocks against eager on the CPU: step time at h = 1, 2 and T.

Two models, each wrapped with :func:`recede.wrap` and compiled through ``net.compile(backend=...)``
(every block and head compiled in place; the engine calls them one by one):

* ``resnet50`` — timm's ResNet-50 (T = 16 bottlenecks, 100 classes) at a reduced 64 × 64
  resolution, batch 4;
* ``gpt2-stack`` — a GPT-2-small-shaped stack: 12 pre-norm causal ``nn.TransformerEncoderLayer``
  (width 768, 12 heads, MLP 3072, GELU, no dropout) on hidden states of 64 tokens, batch 1,
  with one LayerNorm → linear head over a 2048-token vocabulary shared by every depth and a
  per-token cross-entropy (the full 50 257-token LM head is left out on the CPU).

For each h the script prints the median step time (forward + gradients, ``.grad`` cleared)
of the eager and the compiled net, measured in this one run with the rounds interleaved, and
their ratio; the first compiled step of each model (where compilation happens, wall seconds)
is reported apart.  Steps are timed in this process's CPU seconds (``time.process_time``) on
one thread by default, so other jobs on a shared machine do not inflate them (``--clock wall``
for wall time).  ``--backend`` is passed to ``torch.compile`` (``inductor``, the default, needs a C++
compiler; ``aot_eager`` traces without generating code).  Nothing is asserted: read the ratios.

    python benchmarks/compile.py [--models resnet50 gpt2-stack] [--backend inductor] [--repeats 5]
                                 [--threads 1] [--clock cpu]
    python benchmarks/compile.py --smoke     # a tiny gpt2-stack, aot_eager, one repeat: checks the script runs
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable

import torch
from torch import nn

import recede
from recede.measure.usage import interleaved_medians, timed_step
from recede.runs.reports import markdown_table

# isort: split
from models import Causal, per_token_cross_entropy  # benchmarks/models.py, beside this script


def resnet50(smoke: bool = False) -> tuple[recede.BlockNet, torch.Tensor, torch.Tensor]:
    import timm

    sizes = dict(layers=(1, 1, 1, 1), channels=(4, 8, 8, 16)) if smoke else {}  # T = 4
    batch, side, classes = (2, 16, 10) if smoke else (4, 64, 100)
    net = recede.wrap(timm.create_model("resnet50", pretrained=False, num_classes=classes, **sizes))
    return net, torch.randn(batch, 3, side, side), torch.randint(0, classes, (batch,))


def gpt2_stack(smoke: bool = False) -> tuple[recede.BlockNet, torch.Tensor, torch.Tensor]:
    layers, width, heads, tokens, vocab = (3, 16, 2, 8, 32) if smoke else (12, 768, 12, 64, 2048)
    stack = nn.Sequential(*[Causal(width, heads) for _ in range(layers)])
    head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, vocab))
    net = recede.wrap(stack, head=head, loss_fn=per_token_cross_entropy)
    return net, torch.randn(1, tokens, width), torch.randint(0, vocab, (1, tokens))


MODELS = {"resnet50": resnet50, "gpt2-stack": gpt2_stack}


def benchmark(name: str, backend: str, repeats: int, clock: Callable[[], float], smoke: bool = False) -> list[dict]:
    """Rows for one model: eager and compiled median step time at h = 1, 2, T."""
    torch.manual_seed(0)
    eager, x, y = MODELS[name](smoke)
    compiled = copy.deepcopy(eager)
    compiled.compile(backend=backend)
    horizons = sorted({1, 2, eager.T})
    start = time.perf_counter()
    recede.MPC(compiled, eager.T).backward(x, y)
    first = time.perf_counter() - start
    runs = {}
    for h in horizons:
        runs[("eager", h)] = timed_step(recede.MPC(eager, h), eager, x, y)
        runs[("compiled", h)] = timed_step(recede.MPC(compiled, h), compiled, x, y)
    median = interleaved_medians(runs, repeats, warmup=1 if smoke else 2, clock=clock)
    return [
        {
            "model": name,
            "T": eager.T,
            "h": h,
            "eager ms": 1e3 * median[("eager", h)],
            "compiled ms": 1e3 * median[("compiled", h)],
            "compiled / eager": median[("compiled", h)] / median[("eager", h)],
            "first compiled step s": first,
        }
        for h in horizons
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument(
        "--backend", default=None, help="torch.compile backend (default: inductor; aot_eager with --smoke)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5; 1 with --smoke)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny models, 1 repeat, aot_eager unless --backend: checks the script runs"
    )
    args = parser.parse_args()
    args.backend = args.backend or ("aot_eager" if args.smoke else "inductor")
    args.repeats = args.repeats or (1 if args.smoke else 5)
    if args.smoke and args.models == list(MODELS):
        args.models = ["gpt2-stack"]  # compiling even a tiny ResNet-50 takes 15 s
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    # ResNet-50's 16 bottlenecks share one forward in more than Dynamo's default 8 shapes and
    # strides; past that limit it would silently run the rest eager.
    with torch._dynamo.config.patch(recompile_limit=64):
        rows = [row for name in args.models for row in benchmark(name, args.backend, args.repeats, clock, args.smoke)]
    print(
        f"torch {torch.__version__}, backend {args.backend}, {torch.get_num_threads()} thread(s), CPU, "
        f"{args.clock} time; medians of {args.repeats} interleaved repeats after {1 if args.smoke else 2} "
        f"warm-up rounds{' (smoke run: tiny models)' if args.smoke else ''}\n"
    )
    print(
        markdown_table(
            rows, ["model", "T", "h", "eager ms", "compiled ms", "compiled / eager", "first compiled step s"]
        )
    )


if __name__ == "__main__":
    main()
