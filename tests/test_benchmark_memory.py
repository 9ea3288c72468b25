"""The memory columns of the LM and model benchmarks: the real peak of a step is the headline,
the saved-tensor meter its breakdown (issue 22), and results written before the real peak was
measured still render (n/a)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_long_context_real_peak_holds_the_saved_activations():
    long_context = _load("long_context")
    args = argparse.Namespace(
        vocab=256,
        lengths=[32],
        preset="tiny",
        attention="sdpa",
        layers=3,
        width=16,
        heads=2,
        batch=1,
        methods=["bp", "ff"],
        no_timing=True,
        bf16=False,
        repeats=1,
    )
    rows = long_context.measure_length(args, 32, torch.device("cpu"))
    long_context.add_ratios(rows)
    bp, ff = rows
    assert (bp["method"], ff["method"]) == ("BP", "FF")
    # the real peak holds the parameters, Adam's state, the gradients and what is saved for backward
    for row in rows:
        assert row["real MiB"] >= row["saved MiB"] + 3 * row["state MiB"] / 4 > row["saved MiB"] > 0
    assert bp["real / BP"] == bp["saved / BP"] == 1
    assert ff["saved / BP"] < 1


def test_long_context_replots_a_json_without_the_real_peak(tmp_path, monkeypatch, capsys):
    rows = [
        {"S": s, "method": m, "T": 3, "saved MiB": saved * s, "state MiB": 1.0, "saved / state": saved * s}
        for s in (16, 32)
        for m, saved in (("BP", 0.01), ("FF", 0.004))
    ]
    for row in rows:
        row |= {"cuda peak MiB": None, "s/step": 0.1, "tokens/s": row["S"] / 0.1}
    settings = {"lengths": [16, 32], "preset": "tiny", "layers": 3, "width": 16, "heads": 2, "device": "cpu"}
    settings |= {"attention": "sdpa", "vocab": 256, "batch": 1, "bf16": False, "no_timing": False}
    (tmp_path / "long_context.json").write_text(json.dumps({"settings": settings, "rows": rows}))
    monkeypatch.setattr(sys, "argv", ["long_context.py", "--replot", "--out", str(tmp_path)])
    _load("long_context").main()
    out = capsys.readouterr().out
    assert "| 32 | FF | n/a | n/a | 0.128 | 0.4 |" in out
    saved = json.loads((tmp_path / "long_context.json").read_text())
    assert math.isnan(saved["fits"][1]["real / BP at longest S"])


def test_models_benchmark_reports_the_real_peak_beside_the_meter():
    rows = _load("models").benchmark("gpt-small", 2, 1, 16, torch.device("cpu"), smoke=True)
    for row in rows:
        assert row["real MiB"] > row["saved MiB"] > 0
    bp = next(r for r in rows if r["h"] == "T")
    assert bp["saved / BP"] == 1 and bp["real / BP"] == pytest.approx(1, abs=0.25)  # MPC(T) against autograd's BP
    assert rows[0]["saved / BP"] < 1


def test_lm_frontier_summary_keeps_real_and_saved_apart():
    frontier = _load("lm_frontier")

    def run(real: bool) -> dict:
        compare = [
            {"method": "BP", "test bits/byte": 3.0, "saved MiB": 10.0, "time ratio": 1.0, "cos θ": 1.0},
            {"method": "FF", "test bits/byte": 3.1, "saved MiB": 3.0, "time ratio": 1.1, "cos θ": 0.8},
        ]
        for row, mib in zip(compare, (40.0, 16.0)):
            row |= {"tokens/s": 100.0} | ({"real MiB": mib} if real else {})
        bp = compare[0]
        return {"rows": [r | frontier.memory_columns(r, bp) for r in compare]}

    rows = frontier.summarise([run(True), run(True)])
    ff = rows[1]
    assert (ff["real ratio"], ff["saved ratio"], ff["real MiB"]) == (0.4, 0.3, 16.0)
    assert frontier.meets_target(rows) == frontier.meets_target(rows, by="real ratio") == ["FF"]
    assert frontier.meets_target(rows, memory=0.35, by="real ratio") == []
    old = frontier.summarise([run(True), run(False)])  # one seed from before the real peak
    assert old[1]["real ratio"] is None and old[1]["saved ratio"] == 0.3
    assert frontier.cell(old[1], "real ratio", 2) == "n/a"
    assert frontier.meets_target(old, by="real ratio") == []
