"""What the robust rule's held-out test buys: the rule without it, on the study's tasks.

The robust scalars (:mod:`recede.bpm.scalars`) are a = 1 and

    λ = min(λ_start, max(0, c_lower), ‖ḡ_h‖/‖d̂‖),

λ_start the James–Stein factor of the fresh offset, c_lower the held-out lower bound on what the
last offset was still worth at the end of its period.  This script trains BP-modified FF with
λ_start alone ("js-nocap") and with λ_start and the step cap ("js": the rule without its
held-out test), beside FF, the robust default and Paper B's rule, in two regimes:

* ``paper`` — Paper B's (K = 1 epoch, B' = 0.64 % of K·B), on the study's four hardest cases
  (the (task, lr) pairs where Paper B's rule lost most or diverged);
* ``fresh`` — the demo's (K = 0.3 epoch, B' = 160), on the digits ResNet at lr 0.01.

The variants are a/λ rules passed to BP-modified in place of the robust one (``rule=`` takes
a :data:`recede.bpm.estimator.Rule`);
every run of a (task, seed) starts from the same weights and data order as the study's
(:func:`recede.reproduce.bpm_robustness.run_one`).  Prints the machine, one line per run and a Markdown table
(mean ± sample sd over seeds 0, 1, 2; "div" counts diverged runs).

    python experiments/bpm_robustness/held_out_ablation.py [--regimes paper fresh] [--variants FF robust ...]
    python experiments/bpm_robustness/held_out_ablation.py --smoke    # tiny: checks the script runs
"""

from __future__ import annotations

import argparse
import statistics

import torch

from recede import data
from recede.bpm import scalars as bp_scalars
from recede.bpm.estimator import Rule
from recede.reproduce import bpm_robustness as study
from recede.runs.reports import machine

CASES = {
    "paper": [("m2", 0.03), ("digits-resnet", 0.01), ("vit-digits", 0.003), ("spirals", 0.03)],
    "fresh": [("digits-resnet", 0.01)],
}
VARIANTS = {"paper": ["FF", "robust", "js", "js-nocap"], "fresh": ["FF", "paper", "robust", "js", "js-nocap"]}


def without_held_out_test(cap: bool) -> Rule:
    """λ = λ_start (and ≤ ‖ḡ_h‖/‖d̂‖ with ``cap``), a = 1: the robust rule less its c_lower (and
    less its limit on λ's growth from the last refresh: ``previous`` is accepted and unused)."""

    def scalars(
        m: bp_scalars.BlockMoments,
        B_prime: int,
        check: dict[str, torch.Tensor] | None,
        previous: torch.Tensor | None = None,
    ):
        lam = bp_scalars.fresh_lambda(m, B_prime)
        if cap:
            lam = torch.minimum(lam, bp_scalars.step_cap(m))
        return torch.ones_like(m.hh), lam

    return scalars


def train(spec: dict, task: data.Task, lr: float, seed: int, regime: dict, variant: str) -> float | None:
    rules = {"js": without_held_out_test(True), "js-nocap": without_held_out_test(False)}
    if variant == "FF":
        record = study.run_one(spec, task, "ff", lr, seed, regime)
    else:
        record = study.run_one(spec, task, "bpm-ff", lr, seed, regime, rules.get(variant, variant))
    return record["metric"]


def cell(values: list[float | None]) -> str:
    done = [v for v in values if v is not None]
    text = (
        "diverged"
        if not done
        else f"{statistics.mean(done):.4g} ± {statistics.stdev(done):.2g}"
        if len(done) > 1
        else f"{done[0]:.4g}"
    )
    return text + (f" ({len(values) - len(done)} div)" if len(done) < len(values) else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regimes", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=VARIANTS["fresh"],
        default=VARIANTS["fresh"],
        help="train only these (each regime runs those of its own it has)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="every variant for one epoch on 128 spirals, seed 0, both regimes: checks the script runs",
    )
    args = parser.parse_args()
    cfg = study.load_config()
    cases, fresh = CASES, {"period_epochs": 0.3, "offset_samples": 160}
    if args.smoke:
        spirals = cfg["tasks"]["spirals"] | {
            "data_options": {"n": 128, "n_test": 64},
            "epochs": 1,
            "model_options": {"width": 8, "depth": 3, "loss": "cross-entropy"},
        }
        cfg = cfg | {"seeds": [0], "tasks": {"spirals": spirals}}
        cases, fresh = {regime: [("spirals", 0.03)] for regime in CASES}, {"period_epochs": 0.5, "offset_samples": 16}
    torch.set_num_threads(cfg["threads"])
    print(f"machine: {machine()}", flush=True)
    rows = []
    for regime_name in args.regimes:
        regime = cfg["regime"] | (fresh if regime_name == "fresh" else {})
        for task_name, lr in cases[regime_name]:
            spec = cfg["tasks"][task_name]
            task = data.load(spec["data"], **spec["data_options"])
            results = {}
            for variant in [v for v in VARIANTS[regime_name] if v in args.variants]:
                results[variant] = [train(spec, task, lr, seed, regime, variant) for seed in cfg["seeds"]]
                print(f"{regime_name} {task_name} lr {lr:g} {variant}: {results[variant]}", flush=True)
            rows.append(
                f"| {regime_name} | {task_name} | {lr:g} | "
                + " | ".join(cell(results.get(v, [])) if v in results else "—" for v in VARIANTS["fresh"])
                + " |"
            )
    print("| regime | task | lr | " + " | ".join(VARIANTS["fresh"]) + " |")
    print("|---" * (3 + len(VARIANTS["fresh"])) + "|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
