"""Paper A Figs. 3–4: test accuracy, memory and loss snapshots of every horizon on ResNet-50 and ViT.

Paper A §5.1–5.2 trains the full-tuned ResNet-50 and the LoRA-tuned ViT-B/16 on CIFAR-100 with
every horizon h = 1..T (T = 16 bottlenecks, 12 transformer blocks) and plots the final test
accuracy beside the memory of each horizon (Fig. 3) and the training loss of each horizon at a
few recording epochs (Fig. 4).  Table D2 gives the settings: "Full-Training" (Adam, lr 1e-3,
batch 64, 50 epochs) and "Fine-tuning" (SGD, lr 1e-3, batch 32, 20 epochs).

Each entry of the config's ``sweeps`` section is one model.  For every seed and horizon the
same start is trained with ``mpc:h`` and Paper A's lr × 0.9 rule; M(h) is the peak of bytes
saved for backward in one step (and the CUDA peak on a GPU).  The start is either the entry's
``model_options.weights`` file (``--weights``; the paper's pretrained start) or, with a
``pretrain`` section (CPU scale, where no pretrained weights exist), the model trained by BP on
the first ``pretrain.samples`` training images, its final classifier then re-initialised (as a
1000-class ImageNet classifier is replaced for CIFAR-100) and the adapter, if any, added; the
horizons then train on the remaining images.  Or, with an ``init`` entry (a ``recede pretrain``
checkpoint, ``--init`` of ``reproduce``), the start is the model built with the seed and that
file loaded into it (:func:`recede.runs.pretrain.load_init`; ``init_skip`` globs keep their fresh
initialisation, e.g. ``heads.*``): the fine-tuning regime of docs/finetune.md.  An adapter in
``model_options`` (``adapter: lora``) takes the plain checkpoint into its wrapped layers.

Memory: M(h) is measured after the horizon's training, on its first batch, as
``recede compare`` pays it (:func:`recede.measure.usage.measure_paid`): the real peak of a step
(parameters, buffers, gradients, optimizer state plus the peak bytes the step allocated) and,
as its activation part, the peak of bytes saved for backward.

``select: true`` adds Algorithm 1 (Paper A §4) at the start: cos θ_h and M(h) on
``probe_batches`` batches, the subset H of ``subset_size`` horizons, and the choice ĥ for each
objective × cost column of the config's ``objectives`` (:func:`recede.horizon.selection.solve`); each
fixed h is then scored on the same objective by its loss-decrease rate r(h) = ln(J_h/J_0) /
ln(J_T/J_0) (eq. 14, J the training loss over the training set), so ĥ is compared with every
fixed h in hindsight.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Sequence
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn
from torch.utils.data import Subset

from recede import data, models
from recede.core.blocks import BlockNet
from recede.horizon.selection import COST_SHAPES, OBJECTIVES, default_horizons, default_M0, objective_value, solve
from recede.measure.fidelity import gradient_cosine
from recede.models.peft_adapters import apply_adapter
from recede.runs.config import LoopConfig, MeasureConfig, OptimizerConfig, OutputConfig, RunConfig, WorkloadConfig
from recede.runs.plots import figure
from recede.runs.reports import markdown_table, mean_sd, mean_spread
from recede.runs.run import Workload, train_method
from recede.runs.train import EpochRecord, batches, evaluate

ADAPTER_OPTIONS = ("adapter", "adapter_rank", "adapter_alpha")
KEYS = ("model", "data", "optimizer", "batch_size", "epochs", "snapshot_epochs")


def check(label: str, entry: dict) -> None:
    """``ValueError`` naming ``label`` for a missing setting or a bad horizon list."""
    missing = [k for k in KEYS if k not in entry]
    if missing:
        raise ValueError(f"{label}: missing setting(s) {missing}")
    horizons = entry.get("horizons", "all")
    if horizons != "all" and (
        not isinstance(horizons, list) or not all(isinstance(h, int) and h >= 1 for h in horizons)
    ):
        raise ValueError(f"{label}: horizons must be 'all' or a list of integers >= 1, got {horizons!r}")
    starts = [
        k
        for k, given in (
            ("a weights file", (entry.get("model_options") or {}).get("weights")),
            ("a pretrain section", entry.get("pretrain")),
            ("init", entry.get("init")),
        )
        if given
    ]
    if len(starts) > 1:
        raise ValueError(
            f"{label}: give either a weights file or a pretrain section or init, not {' and '.join(starts)}"
        )
    if entry.get("init_skip") and not entry.get("init"):
        raise ValueError(f"{label}: init_skip needs init")
    bad = [e for e in entry["snapshot_epochs"] if not 1 <= e <= entry["epochs"]]
    if bad:
        raise ValueError(f"{label}: snapshot_epochs {bad} outside 1..{entry['epochs']}")


def run(config: dict, progress: bool) -> dict:
    """Every seed × horizon of every entry of ``config["sweeps"]``."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return {
        "device": device,
        "models": {
            key: run_entry(key, entry, config["seeds"], device, progress, config)
            for key, entry in config["sweeps"].items()
        },
    }


COLUMNS = [(o, c) for o in OBJECTIVES for c in COST_SHAPES]


def select(net: BlockNet, probe: list, config: dict) -> dict:
    """Algorithm 1 at ``net``'s current weights: every horizon's cos θ_h and M(h) measured, the
    subset H seen, ĥ per objective × cost column (named ``O1-C1`` ... as in Table D3)."""
    T = net.T
    fid = gradient_cosine(net, probe, list(range(1, T + 1)))
    assert fid.memory is not None  # measured: measure_memory is on
    H = default_horizons(T, config["subset_size"])
    goals, chosen = config["objectives"], {}
    for objective, shape in COLUMNS:
        choice = solve(
            {h: fid.cos[h] for h in H},
            {h: fid.memory[h] for h in H},
            T,
            objective,
            goals["eps"],
            goals["weight"][shape],
            shape,
            goals["c"],
            default_M0(fid.memory, shape),
        )
        chosen[column_name(objective, shape)] = {"h": choice.h, "feasible": choice.feasible}
    return {"cos": fid.cos, "memory": fid.memory, "H": H, "chosen": chosen}


def column_name(objective: str, shape: str) -> str:
    return {"constraint": "O1", "weighted": "O2"}[objective] + "-" + {"linear": "C1", "ladder": "C2"}[shape]


def run_entry(key: str, entry: dict, seeds: list[int], device: str, progress: bool, config: dict | None = None) -> dict:
    started = time.perf_counter()
    task = data.load(entry["data"], **entry.get("data_options", {}))
    pretrain = entry.get("pretrain")
    n_train = len(task.train)  # type: ignore[arg-type]  # torch's Dataset type has no __len__; ours all do
    train_set = Subset(task.train, range(pretrain["samples"], n_train)) if pretrain else task.train
    per_seed = {}
    for seed in seeds:
        torch.manual_seed(seed)
        net = start(entry, task, seed, device, progress)
        T = net.T
        init = copy.deepcopy(net.state_dict())
        horizons = (
            list(range(1, T + 1)) if entry.get("horizons", "all") == "all" else sorted(set(entry["horizons"]) | {T})
        )
        chosen = None
        if entry.get("select"):
            assert config is not None  # Algorithm 1's settings come with select
            probe = [
                (a.to(device), b.to(device))
                for a, b in islice(batches(train_set, entry["batch_size"], True, seed + 1), config["probe_batches"])
            ]
            chosen = select(net, probe, config) | {
                "J0": evaluate(net, train_set, device=device, classification=True)["loss"]
            }
            net.load_state_dict(init)
            horizons = sorted(set(horizons) | {c["h"] for c in chosen["chosen"].values()})
        net.load_state_dict(init)
        # every horizon trains a copy of this start on the training set left after any pretraining
        workload = Workload(
            dataclasses.replace(task, train=train_set),
            entry["model"],
            dict(entry.get("model_options") or {}),
            torch.device(device),
            start=net,
        )
        runs = {}
        for h in horizons:
            final: dict[str, float] = {}

            def training_loss(
                trained: BlockNet,
                record: EpochRecord,
                final: dict[str, float] = final,
                scored: bool = chosen is not None,
            ) -> None:
                if scored and record.epoch + 1 == entry["epochs"]:  # J before the measured step
                    final["J"] = evaluate(trained, train_set, device=device, classification=True)["loss"]

            result = train_method(
                workload, f"mpc:{h}", run_config(entry, h, seed, device, progress), out=None, on_epoch=training_loss
            )
            history, paid = result.history, result.memory  # paid: measured after training, on the first batch
            assert paid is not None
            runs[h] = {
                "train_loss": [r.train_loss for r in history],
                "test_accuracy": [100 * r.test["accuracy"] for r in history],
                "saved_bytes": paid.saved_peak_bytes,
                "cuda_peak_bytes": paid.cuda_peak_bytes,
                "real_bytes": paid.real_peak_bytes,
            } | final
        per_seed[seed] = {"T": T, "runs": runs} | ({"selection": chosen} if chosen is not None else {})
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    sizes = {"n_train": len(train_set), "n_test": len(task.test)}  # type: ignore[arg-type]  # ours all have __len__
    return {
        "entry": entry,
        **sizes,
        "trainable": trainable,
        "seeds": per_seed,
        "seconds": time.perf_counter() - started,
    }


def run_config(entry: dict, h: int, seed: int, device: str, progress: bool) -> RunConfig:
    """One horizon's run of ``entry``: ``mpc:h`` from ``seed`` with the entry's optimizer and
    Paper A's lr × 0.9 rule; nothing written, the paid memory measured after training."""
    opt = entry["optimizer"]
    return RunConfig(
        workload=WorkloadConfig(
            entry["model"], entry["data"], dict(entry.get("model_options") or {}), dict(entry.get("data_options") or {})
        ),
        methods=[f"mpc:{h}"],
        optimizer=OptimizerConfig(opt["name"], opt["lr"], opt.get("momentum", 0.0), 0.9),
        loop=LoopConfig(epochs=entry["epochs"], batch_size=entry["batch_size"], seed=seed, device=device),
        output=OutputConfig(out=None, progress=progress),
    ).validate()


def start(entry: dict, task: data.Task, seed: int, device: str, progress: bool) -> BlockNet:
    """The network every horizon of this seed starts from (see the module docstring)."""
    options = dict(entry.get("model_options") or {})
    pretrain = entry.get("pretrain")
    if entry.get("init"):
        from recede.runs.pretrain import load_init

        net = models.build(entry["model"], task, **options)
        load_init(net, entry["init"], entry.get("init_skip") or ())
        return net.to(device)
    if not pretrain:
        return models.build(entry["model"], task, **options).to(device)
    adapter = {k: options.pop(k) for k in ADAPTER_OPTIONS if k in options}
    built = models.build(entry["model"], task, **options).to(device)
    # BP on the first pretrain.samples images (their own data order), no lr decay, no evaluation
    opt = pretrain["optimizer"]
    config = RunConfig(
        workload=WorkloadConfig(entry["model"], entry["data"], options, dict(entry.get("data_options") or {})),
        methods=["bp"],
        optimizer=OptimizerConfig(opt["name"], opt["lr"], opt.get("momentum", 0.0), 1.0),
        loop=LoopConfig(epochs=pretrain["epochs"], batch_size=entry["batch_size"], seed=seed + 10_000, device=device),
        measure=MeasureConfig(paid=False, test=False),
        output=OutputConfig(out=None, progress=progress),
    ).validate()
    workload = Workload(
        dataclasses.replace(task, train=Subset(task.train, range(pretrain["samples"]))),
        entry["model"],
        options,
        torch.device(device),
        start=built,
    )
    net = train_method(workload, "bp", config, out=None).net
    torch.manual_seed(seed)
    for module in net.head(net.T).modules():
        if isinstance(module, nn.Linear):
            module.reset_parameters()
    if adapter.get("adapter"):
        apply_adapter(
            net, adapter["adapter"], r=adapter.get("adapter_rank", 1), alpha=adapter.get("adapter_alpha", 4.0)
        )
    return net


# -- summaries -------------------------------------------------------------------------------


def _runs(model: dict) -> list[dict]:
    return [s["runs"] for s in model["seeds"].values()]


def _get(runs: dict, h: int) -> dict:
    return runs[h] if h in runs else runs[str(h)]


def horizons_of(model: dict) -> list[int]:
    return sorted(int(h) for h in _runs(model)[0])


def memory_of(model: dict, h: int) -> float:
    """M(h) in MiB: the real peak of a step where measured, else the CUDA peak, else the
    saved-for-backward peak (results written before real peaks were measured)."""
    return float(
        np.mean(
            [
                (run.get("real_bytes") or run["cuda_peak_bytes"] or run["saved_bytes"]) / 2**20
                for run in (_get(r, h) for r in _runs(model))
            ]
        )
    )


def saved_of(model: dict, h: int) -> float:
    """The saved-for-backward peak of M(h)'s step in MiB."""
    return _get(_runs(model)[0], h)["saved_bytes"] / 2**20


def linear_r2(xs: Sequence[float], ys: Sequence[float]) -> float:
    a, b = np.polyfit(xs, ys, 1)
    residual = np.asarray(ys) - (a * np.asarray(xs) + b)
    total = ((np.asarray(ys) - np.mean(ys)) ** 2).sum()
    return float(1 - (residual**2).sum() / total) if total > 0 else 1.0


def plot(result: dict, out: Path) -> list[str]:
    """fig3.png (accuracy and memory per horizon) and fig4.png (loss snapshots) under ``out``."""
    keys = list(result["models"])
    with figure(out / "fig3.png", 1, len(keys), figsize=(5 * len(keys), 3.8), squeeze=False) as (_, axes):
        for ax, key in zip(axes[0], keys):
            model = result["models"][key]
            hs = horizons_of(model)
            ax.bar(hs, [memory_of(model, h) for h in hs], color="lightsteelblue", label="memory")
            ax.set(xlabel="horizon h", ylabel="memory [MiB]", title=f"{key}: {model['entry']['model']}")
            twin = ax.twinx()
            stats = [_measured(mean_sd([_get(r, h)["test_accuracy"][-1] for r in _runs(model)])) for h in hs]
            twin.errorbar(
                hs,
                [s[0] for s in stats],
                yerr=[s[1] for s in stats],
                fmt="o-",
                color="darkred",
                capsize=2,
                label="test accuracy",
            )
            twin.set_ylabel(f"final test accuracy % (mean ± sd, {len(model['seeds'])} seeds)")
    with figure(out / "fig4.png", 1, len(keys), figsize=(5 * len(keys), 3.8), squeeze=False) as (_, axes):
        for ax, key in zip(axes[0], keys):
            model = result["models"][key]
            hs = horizons_of(model)
            for epoch in model["entry"]["snapshot_epochs"]:
                ax.plot(
                    hs,
                    [np.mean([_get(r, h)["train_loss"][epoch - 1] for r in _runs(model)]) for h in hs],
                    "o-",
                    ms=3,
                    label=f"epoch {epoch}",
                )
            ax.set(
                yscale="log",
                xlabel="horizon h",
                ylabel="training loss (mean over seeds)",
                title=f"{key}: loss snapshots",
            )
            ax.legend(fontsize=7)
    return ["fig3.png", "fig4.png"]


def render(result: dict, config: dict) -> list[str]:
    """The Markdown of Figs. 3–4, mean ± sd over the seeds."""
    lines = [
        f"Device {result['device']}; seeds {', '.join(map(str, config['seeds']))}; every number is "
        "mean ± sd over the seeds.  Memory: the real peak of one step (parameters, buffers, gradients, "
        "optimizer state and the peak bytes the step allocated; mean over seeds) where measured, else the "
        "CUDA peak, else the peak of bytes saved for backward; saved MiB is that last, the activations.",
        "",
        "### Settings",
        "",
    ]
    rows = []
    for key, model in result["models"].items():
        e = model["entry"]
        start_ = (
            "weights file"
            if (e.get("model_options") or {}).get("weights")
            else f"init {Path(str(e['init'])).name}"
            + (f" (fresh: {', '.join(e.get('init_skip') or [])})" if e.get("init_skip") else "")
            if e.get("init")
            else f"BP on {e['pretrain']['samples']} images, {e['pretrain']['epochs']} epochs"
            if e.get("pretrain")
            else "random"
        )
        rows.append(
            {
                "model": key,
                "net": e["model"],
                "options": _short(e.get("model_options")),
                "T": next(iter(model["seeds"].values()))["T"],
                "data": f"{e['data']} {_short(e.get('data_options'))}",
                "train / test": f"{model['n_train']} / {model['n_test']}",
                "start": start_,
                "trainable params": model["trainable"],
                "optimizer": _short(e["optimizer"]),
                "batch": e["batch_size"],
                "epochs": e["epochs"],
                "minutes": model["seconds"] / 60,
            }
        )
    lines += [
        markdown_table(rows, list(rows[0])),
        "",
        "### Fig. 3 — test accuracy and memory per horizon",
        "",
        "![fig3](fig3.png)",
        "",
    ]
    verdicts = []
    for key, model in result["models"].items():
        hs = horizons_of(model)
        T = max(hs)
        snaps = model["entry"]["snapshot_epochs"]
        rows = []
        for h in hs:
            row = {
                "h": h,
                "memory MiB": memory_of(model, h),
                "saved MiB": saved_of(model, h),
                "test acc %": mean_spread([_get(r, h)["test_accuracy"][-1] for r in _runs(model)]),
            }
            for epoch in snaps:
                row[f"loss @ epoch {epoch}"] = mean_spread([_get(r, h)["train_loss"][epoch - 1] for r in _runs(model)])
            rows.append(row)
        lines += [f"**{key}** ({model['entry']['model']}, T = {T}):", "", markdown_table(rows, list(rows[0])), ""]
        acc = {h: [_get(r, h)["test_accuracy"][-1] for r in _runs(model)] for h in hs}
        rho = [_spearman(hs, [_get(r, h)["test_accuracy"][-1] for h in hs]) for r in _runs(model)]
        bp = np.mean(acc[T])
        close = min((h for h in hs if abs(np.mean(acc[h]) - bp) <= max(1.0, _measured(mean_sd(acc[T]))[1])), default=T)
        mem = [memory_of(model, h) for h in hs]
        first = [max(v) / min(v) for v in ([_get(r, h)["train_loss"][snaps[0] - 1] for h in hs] for r in _runs(model))]
        last = [max(v) / min(v) for v in ([_get(r, h)["train_loss"][snaps[-1] - 1] for h in hs] for r in _runs(model))]
        verdicts.append((key, rho, close, T, bp, acc, mem, hs, first, last))
    lines += [
        "- Paper (§5.2, Fig. 3): larger horizons perform better and converge to BP.  Ours: Spearman "
        "correlation of final test accuracy with h "
        + "; ".join(
            f"{k} {mean_spread(rho, 2)} ({_verdict(bool(np.mean(rho) > 0.5))}); within max(1 point, BP's sd) of "
            f"BP ({bp:.1f} %) from h = {close} of T = {T}; FF {np.mean(acc[1]):.1f} %"
            for k, rho, close, T, bp, acc, *_ in verdicts
        )
        + ".",
        "- Paper (§5.1): memory grows with h; linear for ViT (equal blocks), not for ResNet-50 (stages "
        "of different activation sizes).  Ours: R² of a linear fit, M(1)/M(T): "
        + "; ".join(f"{k} {linear_r2(hs, mem):.4f}, {mem[0] / mem[-1]:.2f}" for k, *_, mem, hs, _, _ in verdicts)
        + ".",
        "",
        "### Fig. 4 — training-loss snapshots per horizon",
        "",
        "![fig4](fig4.png)",
        "",
        "- Paper (§5.2, Fig. 4): in early epochs the loss is aligned across horizons; later it diverges, "
        "most for small horizons.  Ours: max/min training loss over horizons at the first vs the last "
        "snapshot epoch: "
        + "; ".join(
            f"{k} {mean_spread(first)} → {mean_spread(last)} ({_verdict(np.mean(last) > np.mean(first))})"
            for k, *_, first, last in verdicts
        )
        + ".",
        "",
    ]
    chosen = {k: m for k, m in result["models"].items() if all("selection" in s for s in m["seeds"].values())}
    if chosen:
        lines += [
            "### Algorithm 1's horizon against every fixed h",
            "",
            "Algorithm 1 runs once per seed at the start (cos θ_h and M(h) on "
            f"{config['probe_batches']} batches, the subset H), picks ĥ per column; every fixed h is then "
            "scored on the same objective by its measured r(h) = ln(J_h/J_0)/ln(J_T/J_0) (J: training loss "
            "over the training set after the last epoch) and the M(h) Algorithm 1 measured. *best h*: the "
            "fixed h with the best objective in hindsight, per seed; *rank*: ĥ's place among the T fixed "
            "horizons (1 = best; ties share the better place); O1 infeasible (r < 1 − ε) counts as worst.",
            "",
        ]
        for key, model in chosen.items():
            lines += [
                f"**{key}** (H = {next(iter(model['seeds'].values()))['selection']['H']}):",
                "",
                *selection_table(model, config),
                "",
            ]
    return lines


def scores(seed: dict, config: dict, objective: str, shape: str) -> dict[int, float]:
    """Every fixed h's objective value in one seed (infeasible: +inf), by
    :func:`recede.horizon.selection.objective_value`."""
    sel, runs = seed["selection"], seed["runs"]
    memory = {int(h): m for h, m in sel["memory"].items()}
    T = seed["T"]
    J0, JT = sel["J0"], _get(runs, T)["J"]
    goals = config["objectives"]
    out = {}
    for h in sorted(int(k) for k in runs):
        r = math.log(_get(runs, h)["J"] / J0) / math.log(JT / J0) if JT != J0 else float("nan")
        value = objective_value(
            r, memory[h], objective, goals["eps"], goals["weight"][shape], shape, goals["c"], default_M0(memory, shape)
        )
        out[h] = math.inf if value is None else value
    return out


def rates(seed: dict) -> dict[int, float]:
    """r(h) of every fixed h in one seed (eq. 14)."""
    J0, JT = seed["selection"]["J0"], _get(seed["runs"], seed["T"])["J"]
    return {int(h): math.log(_get(seed["runs"], h)["J"] / J0) / math.log(JT / J0) for h in seed["runs"]}


def selection_table(model: dict, config: dict) -> list[str]:
    """Markdown: per Table D3 column, ĥ, the best fixed h in hindsight, ĥ's rank and the test
    accuracies of both; then r(h) and the start's cos θ_h per h."""
    seeds = list(model["seeds"].values())
    rows = []
    for objective, shape in COLUMNS:
        name = column_name(objective, shape)
        picked, best, rank, acc_picked, acc_best, feasible = [], [], [], [], [], []
        for seed in seeds:
            values = scores(seed, config, objective, shape)
            h = seed["selection"]["chosen"][name]["h"]
            top = min(values, key=lambda k: (values[k], k))
            picked.append(h)
            best.append(top)
            rank.append(1 + sum(v < values[h] for v in values.values()))
            acc_picked.append(_get(seed["runs"], h)["test_accuracy"][-1])
            acc_best.append(_get(seed["runs"], top)["test_accuracy"][-1])
            feasible.append(seed["selection"]["chosen"][name]["feasible"])
        rows.append(
            {
                "column": name,
                "ĥ per seed": ", ".join(map(str, picked)),
                "best fixed h per seed": ", ".join(map(str, best)),
                f"rank of ĥ (of {seeds[0]['T']})": mean_spread(rank, 2),
                "test acc % at ĥ": mean_spread(acc_picked),
                "test acc % at best h": mean_spread(acc_best),
                "predicted feasible": f"{sum(feasible)}/{len(feasible)}",
            }
        )
    lines = [markdown_table(rows, list(rows[0])), ""]
    hs = sorted(int(h) for h in seeds[0]["runs"])
    per_h = [
        {
            "h": h,
            "cos θ_h at start": mean_spread(
                [
                    float(s["selection"]["cos"][h] if h in s["selection"]["cos"] else s["selection"]["cos"][str(h)])
                    for s in seeds
                ],
                3,
            ),
            "r(h)": mean_spread([rates(s)[h] for s in seeds], 3),
        }
        for h in hs
    ]
    return lines + [markdown_table(per_h, list(per_h[0]))]


def _measured(stats: tuple[float, float] | None) -> tuple[float, float]:
    """A mean and sd over runs that exist (every horizon of a finished sweep has its runs)."""
    assert stats is not None
    return stats


def _spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Spearman's rank correlation; NaN when either side is constant."""
    return float("nan") if len(set(xs)) < 2 or len(set(ys)) < 2 else float(spearmanr(xs, ys)[0])


def _verdict(ok: bool) -> str:
    return "**agrees**" if ok else "**disagrees**"


def _short(options: dict | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in (options or {}).items()) or "—"


def entries(config: dict) -> dict[str, dict]:
    """The model/data entries of the section, by label, for :mod:`recede.reproduce.configs`."""
    return {f"sweeps.{k}": v for k, v in config.get("sweeps", {}).items()}
