"""Which BP-modified rule keeps a gain in fine-tuning, and why the robust rule gives it up
(issue 23 item 3; docs/finetune.md, "Paper B in fine-tuning").

The setting of ``paper_b_table.py`` (pretrained ResNet or ViT, digits 5-9, new heads, SGD with
momentum 0.9, K = one epoch, B' = 0.64 % of K·B in micro-batches of 8), FF as the local method.
Arms, each over seeds, each with plain FF, BP and BP-modified FF (``paper`` and ``robust``):

* ``base`` — as in Table 1.
* ``warmup`` — the heads alone (blocks and adapters frozen) trained for one epoch by their own
  depth's loss before the first refresh; plain FF and BP get the same warm-up.
* ``reuse`` — every head whose shapes agree with the pretrained final head starts as a copy of it
  (the source's 5 classes stand for the target's 5, in order); the final head included.
* ``drift`` — BP-modified FF that also refreshes early, once any modified block's head has moved
  by more than ``--drift`` (relative norm) since the last refresh (at most every K/8 steps).
* ``ablate`` — the robust rule with one bound removed: ``no-test`` (without the held-out lower
  bound c_lower), ``no-trust`` (without the growth/probe limit), ``james-stein`` (λ = λ_fresh).

Every refresh's statistics are kept (a, λ, bias and variance terms of E, cos(ĝ, ḡ_T) held out,
``end_point`` c: the last offset's share still whole at its period's end, λ_fresh, step cap), so
the report gives per-period bias, variance, staleness and held-out cosines.  Writes
``paper_b_rule_<column>_lr<lr>.json``, ``.md`` and ``.png`` under ``--out``.

    PYTHONPATH=src OMP_NUM_THREADS=1 python experiments/finetune/paper_b_rule.py --column full
    PYTHONPATH=src OMP_NUM_THREADS=1 python experiments/finetune/paper_b_rule.py --smoke
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from paper_b_table import (
    BATCH,
    COLUMNS,
    MICRO,
    SHARE,
    Store,
    gap_recovered,
    mean_sd,
    period_of,
    pm,
    run_one,
    source_checkpoint,
    target_task,
)

from recede.bpm import scalars as bp_scalars
from recede.bpm.estimator import BPModified
from recede.core.engine import MPC
from recede.methods import default_offset_samples
from recede.runs.plots import figure
from recede.runs.reports import markdown_table
from recede.runs.train import batches, make_optimizer

# -- candidates ----------------------------------------------------------------------------------


def head_warmup(data, epochs: int, lr: float, seed: int) -> Callable[[Any, Any, torch.optim.Optimizer], None]:
    """Train only the heads on ``data`` (each by its own depth's loss; blocks and adapters frozen)
    for ``epochs``, with SGD at ``lr``, momentum 0.9, its own data order."""

    def before(net, engine, optimizer) -> None:
        head_params = {id(p) for t in range(1, net.T + 1) for p in net.head_parameters(t)}
        frozen = [p for p in net.parameters() if p.requires_grad and id(p) not in head_params]
        for p in frozen:
            p.requires_grad_(False)
        heads = [p for p in net.parameters() if p.requires_grad]
        warm = make_optimizer(heads, "sgd", lr, 0.9)
        local = MPC(net, 1)
        try:
            for epoch in range(epochs):
                for x, y in batches(data, BATCH, True, seed + 7919, epoch):
                    warm.zero_grad(set_to_none=True)
                    local.backward(x, y)
                    warm.step()
        finally:
            for p in frozen:
                p.requires_grad_(True)
            net.zero_grad(set_to_none=True)

    return before


def reuse_final_head(checkpoint: str) -> Callable[[torch.nn.Module], None]:
    """Copy the checkpoint's final head into every head whose tensors have its shapes."""

    def hook(net) -> None:
        from safetensors.torch import load_file

        tensors = load_file(checkpoint)
        final = f"heads.{net.T - 1}."
        keys = [k for k in tensors if k.startswith(final)]
        source = [tensors[k] for k in sorted(keys)]
        with torch.no_grad():
            for head in net.heads:
                mine = sorted(head.state_dict().items())
                if len(mine) == len(source) and all(v.shape == s.shape for (_, v), s in zip(mine, source)):
                    head.load_state_dict({k: s for (k, _), s in zip(mine, source)})

    return hook


class DriftRefresh(BPModified):
    """BPModified that also refreshes once a modified block's head has moved by more than
    ``threshold`` (‖θ − θ_refresh‖ / ‖θ_refresh‖) since the last refresh, at most every K/8 steps."""

    threshold = 0.05

    def backward(self, x, y, *, scaler=None) -> float:
        due = self.step % self.period == 0
        since = self.step - getattr(self, "_last_refresh_step", 0)
        if not due and self.refreshes and since >= max(1, self.period // 8) and self._drifted():
            self.refresh(self.draw(self.refreshes))
            self.early = getattr(self, "early", 0) + 1
        if due:
            self._last_refresh_step = self.step
        return super().backward(x, y, scaler=scaler)

    def refresh(self, micro_batches, *, scaler=None):
        stats = super().refresh(micro_batches, scaler=scaler)
        self._last_refresh_step = self.step
        self._anchor = [p.detach().clone() for t in self.modified for p in self.net.head_parameters(t + self.horizon)]
        return stats

    def _drifted(self) -> bool:
        now = [p.detach() for t in self.modified for p in self.net.head_parameters(t + self.horizon)]
        for a, b in zip(now, self._anchor):
            if float((a - b).norm()) > self.threshold * max(float(b.norm()), 1e-12):
                return True
        return False


def drift_factory(threshold: float):
    def make(net, method, rule, task, seed, period_epochs=1.0, offset_samples=None, custom_rule=None):
        assert method == "ff" and custom_rule is None, "the drift arm is FF's"
        period = period_of(task, period_epochs)
        samples = offset_samples or default_offset_samples(period, BATCH, MICRO, SHARE)
        engine = DriftRefresh(
            net, 1, period, samples, MICRO, rule or "robust", data=task.train, batch_size=BATCH, seed=seed
        )
        engine.threshold = threshold
        return engine

    return make


def robust(m, B_prime, check, previous=None):
    """The robust rule as a :data:`recede.bpm.estimator.Rule` (it reads the check's lower bound)."""
    return bp_scalars.robust_scalars(m, B_prime, None if check is None else check["end"], previous)


def ablated_robust(kind: str):
    """The robust rule without one of its bounds (module docstring's ``ablate`` arm); the
    ``point`` kinds test the last offset at c's point estimate instead of its lower bound."""

    def rule(m, B_prime, check, previous=None):
        end = None if check is None else check["end_point" if kind.startswith("point") else "end"]
        cap = bp_scalars.step_cap(m)
        fresh = bp_scalars.fresh_lambda(m, B_prime)
        prev = torch.zeros_like(m.hh) if previous is None else previous.to(m.hh)
        trust = torch.maximum(bp_scalars.GROWTH * prev, bp_scalars.PROBE * cap)
        test = torch.full_like(m.hh, torch.inf) if end is None else end.clamp_min(0)
        if kind == "no-test":
            lam = torch.minimum(fresh, torch.minimum(cap, trust))
        elif kind in ("no-trust", "point-no-trust"):
            lam = torch.minimum(torch.minimum(fresh, test), cap) if end is not None else torch.zeros_like(m.hh)
        elif kind == "james-stein":
            lam = fresh
        else:
            return bp_scalars.robust_scalars(m, B_prime, end, previous)
        return torch.ones_like(m.hh), lam

    return rule


# -- study ---------------------------------------------------------------------------------------


def arms(args, task, checkpoint: str) -> list[tuple[str, str, str | None, dict[str, Any], Any]]:
    """(arm, method, rule, run_one keywords, custom_rule) of the study."""
    plain = [("bp", None), ("ff", None), ("ff", "paper"), ("ff", "robust")]
    out: list = [("base", m, s, {}, None) for m, s in plain]
    out += [("warmup", m, s, {"before": head_warmup(task.train, 1, args.lr, 0)}, None) for m, s in plain]
    out += [("reuse", m, s, {"init_hook": reuse_final_head(checkpoint)}, None) for m, s in plain]
    out += [("drift", "ff", s, {"method_factory": drift_factory(args.drift)}, None) for s in ("paper", "robust")]
    out += [
        (f"ablate:{k}", "ff", "robust", {}, ablated_robust(k))
        for k in ("no-test", "no-trust", "james-stein", "point", "point-no-trust")
    ]
    if args.smoke:
        keep = {
            ("base", "ff", None),
            ("base", "ff", "paper"),
            ("warmup", "ff", "paper"),
            ("reuse", "ff", "paper"),
            ("drift", "ff", "paper"),
            ("ablate:no-test", "ff", "robust"),
        }
        out = [a for a in out if a[:3] in keep]
    return out


def period_table(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per refresh, mean over seeds of the modified blocks' means (the last, exact block left out)."""
    by_index: dict[int, list[dict[str, Any]]] = {}
    for run in runs:
        for i, r in enumerate(run["refreshes"]):
            by_index.setdefault(i, []).append(r)
    rows = []
    for i, refs in sorted(by_index.items()):

        def avg(field: str, refs: list[dict[str, Any]] = refs) -> float | None:
            values = []
            for r in refs:
                v = r.get(field)
                if v is None:
                    continue
                values.append(statistics.mean(v[:-1]) if isinstance(v, list) else v)
            return statistics.mean(values) if values else None

        rows.append(
            {
                "refresh": i + 1,
                "step": avg("step"),
                "λ": avg("lam"),
                "a": avg("a"),
                "bias": avg("bias"),
                "variance": avg("variance"),
                "cos local": avg("cos_local"),
                "cos (in-sample)": avg("cos"),
                "cos held out": avg("cos_held_out"),
                "cos held out (all)": avg("cos_held_out_all"),
                "c (end_point)": avg("end_point"),
                "c_lower": avg("end_bound"),
                "λ_fresh": avg("lam_fresh"),
                "step cap": avg("step_cap"),
            }
        )
    return rows


SCRATCH_CASES = [("m2", 0.03), ("digits-resnet", 0.01), ("vit-digits", 0.003), ("spirals", 0.03)]
"""docs/paper-b.md's from-scratch study (experiments/bpm_robustness/cpu.yaml): the four (task, lr) cases
where Paper B's rule lost most or diverged and the rule without its held-out test lost
(experiments/bpm_robustness/held_out_ablation.py)."""


def from_scratch(args, out: Path) -> None:
    """FF against robust-rule variants (``--scratch-variant``) on :data:`SCRATCH_CASES`, from random weights,
    Paper B's regime, seeds 0-2, the study's weights and data order (its ``run_one``)."""
    import json

    from recede import data
    from recede.reproduce import bpm_robustness as study

    cfg = study.load_config()
    cases = SCRATCH_CASES
    if args.smoke:
        spirals = cfg["tasks"]["spirals"] | {
            "data_options": {"n": 128, "n_test": 64},
            "epochs": 1,
            "model_options": {"width": 8, "depth": 3, "loss": "cross-entropy"},
        }
        cfg = cfg | {"seeds": [0], "tasks": {"spirals": spirals}}
        cases = [("spirals", 0.03)]
    path = out / "paper_b_rule_from_scratch.json"
    runs = json.loads(path.read_text()) if path.is_file() and not args.smoke else {}
    rows = []
    for task_name, lr in cases:
        spec = cfg["tasks"][task_name]
        task = data.load(spec["data"], **spec["data_options"])
        row: dict[str, Any] = {"task": task_name, "lr": lr}
        values: dict[str, list[float | None]] = {}
        for variant in ["FF"] + args.scratch_variant:
            for seed in cfg["seeds"]:
                key = f"{task_name}/{lr:g}/{variant}/seed{seed}"
                if key not in runs:
                    r = study.run_one(
                        spec,
                        task,
                        "ff" if variant == "FF" else "bpm-ff",
                        lr,
                        seed,
                        cfg["regime"],
                        None if variant == "FF" else ablated_robust(variant),
                    )
                    runs[key] = {k: r[k] for k in ("metric", "curve", "diverged", "seconds")}
                    path.write_text(json.dumps(runs, indent=1))
                    print(f"{key}: {runs[key]['metric']} ({runs[key]['seconds']:.1f} s)", flush=True)
                values.setdefault(variant, []).append(runs[key]["metric"])
        sign = -1 if task_name == "m2" else 1  # m2: test MSE, lower is better
        for variant, vals in values.items():
            done = [v for v in vals if v is not None]
            row[variant] = (
                f"{statistics.mean(done):.4g} ± {statistics.stdev(done):.2g}"
                if len(done) > 1
                else f"{done[0]:.4g}"
                if done
                else "diverged"
            ) + (f" ({len(vals) - len(done)} div)" if len(done) < len(vals) else "")
            if variant != "FF":
                diffs = [sign * (v - f) for v, f in zip(vals, values["FF"]) if v is not None and f is not None]
                se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else 0.0
                worse = len(diffs) < len(vals) or (diffs and statistics.mean(diffs) < -se)
                row[f"{variant} − FF"] = (f"{statistics.mean(diffs):+.3g} ± {se:.2g}" if diffs else "n/a") + (
                    " (worse)" if worse else " (not worse)"
                )
        rows.append(row)
    cols = list(dict.fromkeys(c for r in rows for c in r))
    text = (
        "From scratch (docs/paper-b.md's study, Paper B's regime), the robust rule's variants against FF; "
        "'− FF' paired mean ± standard error, positive = better (m2: MSE, sign flipped)\n\n"
        + markdown_table(rows, cols)
    )
    (out / "paper_b_rule_from_scratch.md").write_text(text + "\n")
    print(text)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="one seed, one epoch, a few arms, 64 images: seconds")
    p.add_argument("--column", choices=list(COLUMNS), default="full")
    p.add_argument("--lr", type=float, default=0.001)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--train-size", type=int, default=None)
    p.add_argument("--drift", type=float, default=0.05, help="relative head movement that triggers a refresh")
    p.add_argument("--arm", action="append", help="run only these arms (base, warmup, reuse, drift, ablate:...)")
    p.add_argument(
        "--from-scratch",
        action="store_true",
        help="instead: the robust variants against FF on docs/paper-b.md's from-scratch study's hard cases",
    )
    p.add_argument(
        "--scratch-variant",
        action="append",
        default=None,
        choices=["point", "point-no-trust", "no-test", "no-trust", "james-stein"],
    )
    p.add_argument("--cache", default="results/pretrained")
    p.add_argument("--out", default="results/finetune-paper-b")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.smoke:
        args.seeds, args.epochs, args.train_size = 1, 1, 64
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.scratch_variant = args.scratch_variant or ["point-no-trust"]
    if args.from_scratch or args.smoke:
        from_scratch(args, out)
        if args.from_scratch:
            return
    task = target_task(args.train_size)
    checkpoint = source_checkpoint(COLUMNS[args.column]["preset"], args.cache, args.smoke)
    meta = {
        "part": "rule",
        "column": args.column,
        "lr": args.lr,
        "epochs": args.epochs,
        "seeds": args.seeds,
        "train_size": args.train_size,
        "drift": args.drift,
    }
    store = Store(out / f"paper_b_rule_{args.column}_lr{args.lr:g}.json", meta)
    table = out / f"paper_b_table_lr{args.lr:g}.json"
    if table.is_file():  # the base arm's runs are Table 1's, where its settings are these
        import json

        saved = json.loads(table.read_text())
        if {k: saved["meta"].get(k) for k in ("lr", "epochs", "seeds", "train_size")} == {
            "lr": args.lr,
            "epochs": args.epochs,
            "seeds": args.seeds,
            "train_size": args.train_size,
        }:
            for key, run in saved["runs"].items():
                column, name, seed = key.split("/")
                if column == args.column and name in ("BP", "FF", "FF+BPM(paper)", "FF+BPM(robust)"):
                    store.runs.setdefault(f"base/{name}/{seed}", run)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for arm, method, rule, kwargs, custom_rule in arms(args, task, checkpoint):
        if args.arm and arm not in args.arm and arm.split(":")[0] not in args.arm:
            continue
        name = "BP" if method == "bp" else "FF" if rule is None else f"FF+BPM({rule})"
        for seed in range(args.seeds):

            def make(seed=seed, method=method, rule=rule, kwargs=kwargs, custom_rule=custom_rule, arm=arm):
                return run_one(
                    args.column,
                    method,
                    rule,
                    seed,
                    task=task,
                    checkpoint=checkpoint,
                    lr=args.lr,
                    epochs=args.epochs,
                    custom_rule=custom_rule,
                    **kwargs,
                )

            results.setdefault(arm, {}).setdefault(name, []).append(store.get(f"{arm}/{name}/seed{seed}", make))
    base = results.get("base", {})
    rows = []
    for arm, by_name in results.items():
        ref = by_name if "FF" in by_name else base
        ff = mean_sd([r["acc"] for r in ref.get("FF", [])])[0]
        bp = mean_sd([r["acc"] for r in (by_name.get("BP") or base.get("BP", []))])[0]
        for name, runs in by_name.items():
            accs = [r["acc"] for r in runs]
            row = {"arm": arm, "method": name, "test acc": pm(accs)}
            if "BPM" in name:
                row["gap recovered"] = f"{100 * gap_recovered(ff, mean_sd(accs)[0], bp):.0f} %"
                row["refreshes/run"] = statistics.mean(len(r["refreshes"]) for r in runs)
                lams = [statistics.mean(s["lam"][:-1]) for r in runs for s in r["refreshes"]]
                row["mean λ"] = statistics.mean(lams) if lams else None
                held = [
                    s["cos_held_out_all"] for r in runs for s in r["refreshes"] if s.get("cos_held_out_all") is not None
                ]
                local = [s["cos_local_all"] for r in runs for s in r["refreshes"][1:]]
                row["cos held out"] = statistics.mean(held) if held else None
                row["cos local"] = statistics.mean(local) if local else None
                ends = [
                    statistics.mean(s["end_point"][:-1]) for r in runs for s in r["refreshes"] if s.get("end_point")
                ]
                row["c (staleness)"] = statistics.mean(ends) if ends else None
            rows.append(row)
    cols = [
        "arm",
        "method",
        "test acc",
        "gap recovered",
        "mean λ",
        "cos local",
        "cos held out",
        "c (staleness)",
        "refreshes/run",
    ]
    text = [
        f"Rule study, {args.column} column, lr {args.lr:g}, {args.epochs} epochs, {args.seeds} seeds "
        f"(gap recovered: against the arm's own FF and BP, else base's)\n",
        markdown_table(rows, cols),
    ]
    periods: dict[str, list[dict[str, Any]]] = {}
    for arm in ("base", "warmup", "reuse"):
        for name in ("FF+BPM(paper)", "FF+BPM(robust)"):
            if results.get(arm, {}).get(name):
                periods[f"{arm} {name}"] = period_table(results[arm][name])
                text += [
                    f"\nPer period, {arm} {name} (means over modified blocks and seeds)\n",
                    markdown_table(periods[f"{arm} {name}"], list(periods[f"{arm} {name}"][0])),
                ]
    (out / f"paper_b_rule_{args.column}_lr{args.lr:g}.md").write_text("\n".join(text) + "\n")
    print("\n".join(text))
    with figure(out / f"paper_b_rule_{args.column}_lr{args.lr:g}.png", 1, 3, figsize=(15, 4)) as (fig, axes):
        for key, rows_ in periods.items():
            x = [r["refresh"] for r in rows_]
            axes[0].plot(x, [r["λ"] for r in rows_], marker="o", label=key)
            axes[1].plot(
                x,
                [r["c (end_point)"] if r["c (end_point)"] is not None else float("nan") for r in rows_],
                marker="o",
                label=key,
            )
            axes[2].plot(
                x,
                [r["cos held out"] if r["cos held out"] is not None else float("nan") for r in rows_],
                marker="o",
                label=f"{key}",
            )
            axes[2].plot(x, [r["cos local"] for r in rows_], ls=":", color=axes[2].lines[-1].get_color())
        for ax, title in zip(
            axes,
            (
                "mean λ per refresh",
                "c: last offset's share whole at its period's end",
                "cos(ĝ, ḡ_T) held out (solid) vs local (dotted)",
            ),
        ):
            ax.set_xlabel("refresh")
            ax.set_title(title, fontsize=9)
        axes[0].legend(fontsize=6)


if __name__ == "__main__":
    main()
