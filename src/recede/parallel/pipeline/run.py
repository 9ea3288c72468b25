"""``recede train --pipeline N``: train each method as an N-stage receding-horizon pipeline.

The command checks its input, then starts itself again as N processes with
:func:`recede.parallel.launch.launch` (gloo, loopback, as ``--nproc`` does).  Every rank builds the
same model and iterates the same batches; rank r trains its stage with an optimizer over its
own parameters, checkpoints it to ``OUT/checkpoints/<method>.stage<r>.pt`` (every
``--checkpoint-every`` steps and at the end) and resumes from it with ``--resume``.  After each
epoch the stages' parameters are gathered so that rank 0 can evaluate the whole model; rank 0
writes the table, ``metrics.json``, ``loss.png`` and ``report.md``.  A rank that dies or hangs
ends the others with one line naming the failed transfer
(:class:`~recede.parallel.data_parallel.RankFailure`) and exit status 1.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from recede.core.blocks import BlockNet
from recede.measure.memory import measure
from recede.methods import MethodSpec, default_offset_samples, epoch_steps
from recede.parallel.pipeline.stage import Pipeline
from recede.runs import checkpoint, preflight
from recede.runs.config import RunConfig
from recede.runs.reports import machine
from recede.runs.results import plain_histories, write_results
from recede.runs.run import MethodResult, Setup, Workload, identity, slug
from recede.runs.train import EpochRecord, evaluate

RUN_ID = "RECEDE_RUN_ID"
"""The environment variable by which the launcher gives every stage the run's id."""


def _identity(args: Any, micro: int) -> dict:
    return identity(args) | {"pipeline": args.pipeline, "micro_batches": micro}


def _horizon(spec: MethodSpec, T: int) -> int:
    """The horizon a pipeline trains ``spec`` with: T for BP, 1 for FF, else its own."""
    horizon = {"bp": T, "ff": 1}.get(spec.kind, spec.horizon)
    assert horizon is not None  # parse_method gives every mpc spec its horizon
    return horizon


def _check_stages(T: int, specs: list[MethodSpec], args: Any) -> None:
    """Every method's horizon in [1, T] and no more stages than blocks: checked before any
    rank starts (and again by each rank, before it writes anything)."""
    if args.pipeline > T:
        raise ValueError(f"--pipeline {args.pipeline}: the model has only T = {T} blocks")
    for spec in specs:
        if not 1 <= _horizon(spec, T) <= T:
            raise ValueError(f"method {spec.label}: the horizon must be in [1, T = {T}]")


def check_stages_agree(
    found: list[Path], specs: list[MethodSpec], stages: int, out: Path, expected: dict
) -> str | None:
    """For ``--resume``: the stage checkpoints of each method must all exist, have been
    written with the options in ``expected`` (the micro-batches included), come from one run
    (the same run id) and stand at the same step; one line naming them otherwise (a crash
    between two ranks' saves leaves stages from different steps).  Returns the run id (None
    when there is nothing to resume)."""
    if not found:
        return None
    ids = set()
    for spec in specs:
        paths = [_stage_path(out, spec, r) for r in range(stages)]
        have = [p for p in paths if p in found]
        if not have:
            continue
        if len(have) < stages:
            lacking = ", ".join(p.name for p in paths if p not in have)
            raise ValueError(
                f"--resume: {spec.label} has checkpoints of some stages only ({lacking} missing); "
                "pass --overwrite to train afresh"
            )
        read = {p: checkpoint.read(p) for p in paths}
        for p, payload in read.items():
            preflight.check_same_run(payload["config"], expected | {"method": spec.label}, p)
        where = {p: (r["config"].get("run_id"), r["loop"]["global_step"]) for p, r in read.items()}
        if len(set(where.values())) > 1:
            detail = ", ".join(f"{p.name} at step {step} of run {str(run)[:8]}" for p, (run, step) in where.items())
            raise ValueError(
                f"--resume: the stage checkpoints disagree ({detail}); they cannot resume "
                "one run: pass --overwrite to train afresh"
            )
        ids.add(next(iter(where.values()))[0])
    if len(ids) > 1:
        raise ValueError(
            "--resume: the methods' stage checkpoints come from different runs; pass --overwrite to train afresh"
        )
    run = next(iter(ids), None)
    return str(run) if run is not None else None


def stage_setup(workload: Workload, spec: MethodSpec, config: RunConfig, net: BlockNet, out: Path | None) -> Setup:
    """How this rank trains its stage of ``net`` with ``spec`` (:func:`recede.runs.run.train_method`
    runs it): every rank iterates the whole data set, steps the optimizer over its own
    parameters and checkpoints its stage; after each epoch the stages' parameters are gathered
    and rank 0 evaluates the whole model.  ``finish`` measures a step and gathers every
    stage's memory and idle share into this method's row."""
    stages, batch_size, seed = config.parallel.pipeline, config.loop.batch_size, config.loop.seed
    horizon = _horizon(spec, net.T)
    micro = config.parallel.micro_batches or 4 * stages
    x, y = workload.batch(batch_size)
    pipe = Pipeline(net, horizon, micro, sample=x[: -(-len(x) // micro)], device=workload.device)
    method: Any = pipe
    if spec.modified:
        b = config.bpm
        period = b.period or epoch_steps(workload.task.train, batch_size)
        samples = b.samples or default_offset_samples(period, batch_size, b.micro_batch)
        method = pipe.bp_modified(
            period,
            samples,
            b.micro_batch,
            rule=b.rule,
            data=workload.task.train,
            batch_size=batch_size,
            seed=seed,
        )
    rank = workload.rank
    run_identity = config.identity() | {
        "pipeline": stages,
        "micro_batches": micro,
        "method": spec.label,
        "stages": pipe.sizes,
        "run_id": os.environ.get(RUN_ID, ""),
    }

    def on_epoch(record: EpochRecord) -> None:
        pipe.gather_parameters()
        if rank == 0:
            record.test = evaluate(
                net, workload.task.test, device=workload.device, classification=workload.classification
            )

    def finish(history: list[EpochRecord], optimizer: torch.optim.Optimizer) -> MethodResult:
        optimizer.zero_grad(set_to_none=True)
        _, memory = measure(lambda: method.backward(x, y), module=net, device=workload.device, real=True)
        optimizer.zero_grad(set_to_none=True)
        saved: list[Any] = [None] * stages
        dist.all_gather_object(
            saved, (memory.saved_peak_bytes, pipe.last_timing.idle_fraction, memory.allocated_peak_bytes)
        )
        final = history[-1]
        steps = sum(r.steps for r in history)
        row = {
            "method": spec.label,
            "train loss": final.train_loss,
            "test loss": final.test.get("loss"),
            "test acc": final.test.get("accuracy"),
            "ms/step": 1000 * sum(r.seconds for r in history) / steps,
            "stages": pipe.sizes,
            "micro-batches": micro,
            "real MiB per stage": " / ".join(f"{r / 2**20:.3g}" for _, _, r in saved),
            "saved MiB per stage": " / ".join(f"{b / 2**20:.3g}" for b, _, _ in saved),
            "idle per stage": " / ".join(f"{i:.2f}" for _, i, _ in saved),
        }
        return MethodResult(spec.label, history, None, net, method, fixed_row=row)

    return Setup(
        method,
        pipe.stage,
        pipe.parameters(),
        None if out is None else _stage_path(out, spec, rank),
        run_identity,
        finish,
        checkpoint_method=method if spec.modified else None,
        on_epoch=on_epoch,
    )


def _stage_path(out: Path, spec: MethodSpec, rank: int) -> Path:
    return out / "checkpoints" / f"{slug(spec)}.stage{rank}.pt"


def report(config: RunConfig, workload: Workload, rows: list[dict], histories: dict, out: Path) -> Path:
    """Rank 0's results folder of a pipeline run (:func:`recede.runs.results.write_results`)."""
    columns = (
        ["method", "train loss", "test loss"]
        + (["test acc"] if workload.classification else [])
        + ["ms/step", "real MiB per stage", "saved MiB per stage", "idle per stage"]
    )
    w, lp = config.workload, config.loop
    title = (
        f"{w.model} on {w.data}, {lp.epochs} epochs, pipeline of {config.parallel.pipeline} "
        f"stages {rows[0]['stages']} × {rows[0]['micro-batches']} micro-batches of batch {lp.batch_size}"
    )
    path = write_results(
        out,
        title=title,
        heading=title,
        rows=rows,
        columns=columns,
        histories=histories,
        metrics={"rows": rows, "machine": machine(workload.device), "history": plain_histories(histories)},
        notes="ms/step is the mean wall time of a training step over the run; real MiB per stage is the "
        "peak bytes each rank allocated in one step above its start (activations, gradients, "
        "received tensors; recede.measure.memory.allocation_peak); saved MiB per stage is each rank's "
        "peak of tensors saved for backward in one step (recede.measure.memory); idle is "
        "the share of that step each rank spent waiting for its neighbours.",
    )
    print(f"results written to {out}/")
    return path
