"""``recede bench``: what one training step of each method costs, without training.

For each method, on one batch of the chosen data: the step time as the user pays it — the
median of ``backward`` (one forward + the method's gradient) over rounds that time every
method in turn, plus for a BP-modified method its refresh amortised over the K steps of its
period (:mod:`recede.measure.usage`) — its ratio to BP, the ratio the layer-aware cost model predicts
(:mod:`recede.measure.cost`, calibrated in the same rounds on this model), the real peak memory of a
step (parameters, buffers and optimizer state plus the peak bytes the step allocates,
:func:`recede.measure.memory.allocation_peak`) and its ratio to BP's, and beside it the breakdown: the
peak bytes saved for backward over step and refresh, the gradients and the optimizer state
(CUDA peak on a GPU).  The numbers are ratios
measured in one run on one machine, not targets.
"""

from __future__ import annotations

from pathlib import Path

from recede.measure.cost import Meter, predicted_ratio
from recede.measure.usage import measure_paid, paid_row, refreshes_per_step, time_methods
from recede.methods import parse_method
from recede.runs.reports import machine
from recede.runs.results import write_results
from recede.runs.run import Checked
from recede.runs.train import make_optimizer

COLUMNS = [
    "method",
    "ms/step",
    "step ms",
    "refresh ms",
    "time ratio",
    "model ratio",
    "memory ratio",
    "real MiB",
    "saved MiB",
    "grads MiB",
    "optimizer MiB",
]


def bench(checked: Checked, timer: Meter) -> Path | None:
    """Time (``timer``) and measure one step of each method of ``checked`` (BP added: every
    ratio is to BP's) on one batch of a fresh model, without training; write the results
    folder."""
    config, workload, specs = checked.config, checked.workload, list(checked.specs)
    if not any(s.kind == "bp" for s in specs):
        specs.insert(0, parse_method("bp"))
    clock = config.measure.clock
    batch_size = config.loop.batch_size
    net = workload.build(config.loop.seed)
    x, y = workload.batch(batch_size)
    methods = [workload.method(net, spec, config) for spec in specs]
    times, costs = time_methods(
        methods, [net] * len(methods), x, y, [refreshes_per_step(m) for m in methods], timer, net
    )
    bp = next(i for i, s in enumerate(specs) if s.kind == "bp")
    opt = config.optimizer
    optimizer = make_optimizer(net.parameters(), opt.name, opt.lr, opt.momentum)
    methods[bp].backward(x, y)
    optimizer.step()  # the optimizer's state exists from its first step on
    memories = [measure_paid(m, net, x, y, optimizer, workload.device) for m in methods]
    rows = [
        {"method": spec.label, **paid_row(t, mem, times[bp], memories[bp]), "model ratio": predicted_ratio(costs, m)}
        for spec, m, t, mem in zip(specs, methods, times, memories)
    ]
    tokens = workload.tokens(batch_size)
    if tokens is not None:
        for row, t in zip(rows, times):
            row["tokens/s"] = tokens / t.seconds
    columns = (
        COLUMNS
        + (["cuda peak MiB", "cuda ratio"] if workload.device.type == "cuda" else [])
        + (["tokens/s"] if tokens is not None else [])
    )
    if config.output.out is None:
        return None
    title = f"{config.workload.model} (T = {net.T}), batch {batch_size}, {workload.device}, {clock} clock"
    out = Path(config.output.out)
    report = write_results(
        out,
        title=title,
        heading=f"Step benchmark: {title}",
        rows=rows,
        columns=columns,
        essential=["method", "time ratio", "memory ratio"],
        metrics={"rows": rows, "data": workload.task.info, "machine": machine(workload.device)},
        notes="ms/step: a step (median of round-robin repeats) plus, for BP-modified methods, one refresh "
        "(refresh ms) amortised over its period.  model ratio: the layer-aware cost model "
        "(recede.measure.cost) calibrated on this model in the same rounds.  memory ratio, real MiB: the "
        "real peak of a step or refresh (parameters, buffers, optimizer state and offsets plus the "
        "peak bytes it allocated: activations, gradients, temporaries, recomputation).  saved MiB: "
        "peak of tensors saved for backward over step and refresh; grads MiB, optimizer MiB: the "
        "gradients and the optimizer's state.",
    )
    print(f"results written to {out}/")
    return report
