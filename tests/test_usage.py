"""Time and memory as the user pays them: refreshes amortised, peaks over step and refresh,
the whole training state."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import resmlp_independent
from torch.utils.data import TensorDataset

from recede.measure.memory import MemoryReport
from recede.measure.usage import (
    REFRESH_BUFFERS,
    PaidMemory,
    StepTime,
    interleaved_medians,
    kept_state,
    measure_paid,
    meter,
    refreshes_per_step,
    step_runs,
    training_state,
)
from recede.methods import build_method
from recede.runs.train import make_optimizer


def bpm_ff(net, period: int = 5):
    data = TensorDataset(torch.randn(64, 5), torch.randint(0, 3, (64,)))
    return build_method(net, "bpm-ff", refresh_data=data, batch_size=8, period=period, offset_samples=16, micro_batch=4)


def test_interleaved_medians_calls_each_run_every_round() -> None:
    calls = {"a": 0, "b": 0}

    def run(name):
        return lambda: calls.__setitem__(name, calls[name] + 1)

    medians = interleaved_medians({"a": run("a"), "b": run("b")}, repeats=3, warmup=2)
    assert set(medians) == {"a", "b"} and all(m >= 0 for m in medians.values())
    assert calls == {"a": 5, "b": 5}


def test_interleaved_medians_read_the_given_clock_after_warmup() -> None:
    ticks = itertools.count()
    calls = []
    runs = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    medians = interleaved_medians(runs, repeats=3, warmup=2, clock=lambda: float(next(ticks)))
    assert [sorted(calls[i : i + 2]) for i in range(0, 10, 2)] == [["a", "b"]] * 5  # one call each per round
    assert medians == {"a": 1.0, "b": 1.0}  # each call spans one tick of the fake clock


def test_meter_clocks() -> None:
    cpu = meter(2, 0, torch.device("cpu"), "cpu")
    assert set(cpu({"a": lambda: None})) == {"a"}
    with pytest.raises(ValueError, match="--clock wall on CUDA"):
        meter(2, 0, torch.device("cuda"), "cpu")
    with pytest.raises(ValueError, match="unknown clock"):
        meter(2, 0, torch.device("cpu"), "gpu")


def test_a_step_costs_its_share_of_the_refreshes() -> None:
    assert StepTime(0.01).seconds == 0.01
    assert StepTime(0.01, 0.2, 1 / 4).seconds == pytest.approx(0.01 + 0.05)
    net = resmlp_independent()
    method = bpm_ff(net, period=5)
    assert refreshes_per_step(method) == pytest.approx(1 / 5)  # no run: one refresh per period
    assert refreshes_per_step(method, steps=12, refreshes=3) == pytest.approx(3 / 12)  # the run's own rate
    assert refreshes_per_step(build_method(net, "ff")) == 0.0


def test_bpm_step_and_refresh_are_timed_apart_and_state_is_kept() -> None:
    torch.manual_seed(0)
    net = resmlp_independent()
    method = bpm_ff(net, period=1)  # a refresh would fall due at every step
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    method.backward(x, y)
    offset, refreshes, step = method.offset.clone(), method.refreshes, method.step
    with kept_state([method]):
        runs = step_runs(method, net, x, y)
        assert set(runs) == {"step", "refresh"}
        runs["step"]()
        assert method.refreshes == refreshes  # the step alone
        runs["refresh"]()
        assert method.refreshes == refreshes + 1 and not torch.equal(method.offset, offset)
    assert torch.equal(method.offset, offset) and (method.refreshes, method.step) == (refreshes, step)
    assert method.data is not None
    assert set(step_runs(build_method(net, "ff"), net, x, y)) == {"step"}


def test_memory_peaks_over_step_and_refresh_and_counts_the_state() -> None:
    torch.manual_seed(0)
    net = resmlp_independent()
    method = bpm_ff(net)
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    optimizer = make_optimizer(net.parameters(), "sgd", 0.1, momentum=0.9)
    method.backward(x, y)
    optimizer.step()
    paid = measure_paid(method, net, x, y, optimizer)
    assert paid.refresh is not None and paid.step.saved_peak_bytes > 0
    assert paid.saved_peak_bytes == max(paid.step.saved_peak_bytes, paid.refresh.saved_peak_bytes)
    assert all(p.grad is None for p in net.parameters())

    params = sum(p.numel() for p in net.parameters()) * 4
    offsets = sum(p.numel() for t in range(net.T - 1) for p in net.block_parameters(t)) * 4  # block T-1 is exact
    assert paid.state == {
        "parameters": params,
        "gradients": params,
        "optimizer": params,  # momentum buffers
        "offsets": offsets,
        "refresh buffers": REFRESH_BUFFERS * offsets,
        "buffers": 0,
    }
    assert paid.real_peak_bytes >= 2 * params + offsets  # parameters, momentum, offsets, and the step's work
    assert paid.state_bytes == 3 * params + offsets + max(
        paid.step.saved_peak_bytes, paid.refresh.saved_peak_bytes + REFRESH_BUFFERS * offsets
    )
    plain = training_state(build_method(net, "ff"), net, make_optimizer(net.parameters(), "adam"))
    assert plain["optimizer"] == 0 and plain["offsets"] == plain["refresh buffers"] == 0  # Adam before its first step


def test_paid_memory_takes_the_larger_peak() -> None:
    state = {"parameters": 10, "gradients": 10, "optimizer": 0, "offsets": 5, "refresh buffers": 20}
    paid = PaidMemory(MemoryReport(100, None), MemoryReport(90, None), state)
    assert paid.saved_peak_bytes == 100 and paid.cuda_peak_bytes is None
    assert paid.state_bytes == 25 + max(100, 90 + 20)
    cuda = PaidMemory(MemoryReport(100, 1000), MemoryReport(90, 1500), state)
    assert cuda.cuda_peak_bytes == 1500
    assert PaidMemory(MemoryReport(100, 7), None, state).state_bytes == 125


KEEP_CHECK = """
import sys, torch
from recede.measure.usage import keep_freed_memory
def rss():
    return int(open('/proc/self/statm').read().split()[1]) * 4096
kept = sys.argv[1] == 'keep' and keep_freed_memory()
before = rss()
x = torch.ones(64 * 2**20 // 4)
del x
print(kept, (rss() - before) / 2**20)
"""


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux's /proc")
def test_freed_memory_stays_in_the_process() -> None:
    def freed_but_resident(mode: str) -> tuple[str, float]:
        run = subprocess.run(
            [sys.executable, "-c", KEEP_CHECK, mode],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")},
        )
        kept, mib = run.stdout.split()
        return kept, float(mib)

    kept, resident = freed_but_resident("keep")
    if kept == "False":
        pytest.skip("not glibc")
    assert resident > 60  # the 64 MiB tensor's pages stay after it is freed
    assert freed_but_resident("default")[1] < 4  # glibc's default gives them back
