"""``recede compare``, ``demo`` and ``bench`` end to end, and the Pareto rule."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SRC, TINY_DEMO, tiny_run

from recede.runs.compare import default_methods, dominated, mean_rows, spread_cells
from recede.runs.demo import demo_methods

TINY = [*tiny_run(depth=6, n=80), "--threads", "1"]


def recede(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run([sys.executable, "-m", "recede", *argv], env=env, capture_output=True, text=True, timeout=300)


def test_compare_writes_the_frontier(tmp_path: Path) -> None:
    run = recede(
        "compare",
        *TINY,
        "--methods",
        "ckpt",
        "ff",
        "mpc:3",
        "loco:3",
        "--timing-steps",
        "2",
        "--cosine-batches",
        "2",
        "--out",
        str(tmp_path),
    )
    assert run.returncode == 0, run.stderr
    assert {"config.yaml", "metrics.json", "report.md", "frontier.png", "loss.png"} <= {
        p.name for p in tmp_path.iterdir()
    }
    rows = {r["method"]: r for r in json.loads((tmp_path / "metrics.json").read_text())["rows"]}
    assert list(rows) == ["BP", "BP+ckpt", "FF", "MPC(h=3)", "LoCo3"]  # BP added: ratios are to BP
    bp, ckpt, ff = rows["BP"], rows["BP+ckpt"], rows["FF"]
    assert bp["time ratio"] == bp["memory ratio"] == 1.0
    assert bp["cos θ"] == pytest.approx(1.0) and ckpt["cos θ"] == pytest.approx(1.0, abs=1e-6)
    assert ckpt["test loss"] == pytest.approx(bp["test loss"], rel=1e-6)
    # memory ratio is the real peak's; at this toy size parameters, gradients and checkpointing's
    # own bookkeeping (an RNG state per segment) outweigh the activations, so only the saved-tensor
    # breakdown orders the methods here (tests/test_recompute.py checks real peaks at a real size)
    assert all(r["real MiB"] > 0 and r["memory ratio"] > 0 for r in rows.values())
    assert ff["saved ratio"] < rows["MPC(h=3)"]["saved ratio"] < 1
    assert ff["cos θ"] < rows["MPC(h=3)"]["cos θ"] < 1
    report = (tmp_path / "report.md").read_text()
    assert "**Dominated**" in report and "**On the frontier**" in report


def test_demo_and_bench_run_offline(tmp_path: Path) -> None:
    demo = recede(
        "demo",
        *TINY_DEMO,
        "--out",
        str(tmp_path / "d"),
    )
    assert demo.returncode == 0, demo.stderr
    metrics = json.loads((tmp_path / "d" / "metrics.json").read_text())
    rows = metrics["rows"]
    assert [r["method"] for r in rows] == ["BP", "BP+ckpt", "FF", "MPC(h=2)", "MPC(h=4)", "FF+BPM"]
    # two seeds, each trained and measured; the table is their mean ± sd
    assert metrics["seeds"] == [0, 1] and [run["seed"] for run in metrics["runs"]] == [0, 1]
    for i, row in enumerate(rows):
        per_seed = [run["rows"][i]["test acc"] for run in metrics["runs"]]
        assert row["test acc"] == pytest.approx(sum(per_seed) / 2)
        assert row["test acc sd"] == pytest.approx(abs(per_seed[0] - per_seed[1]) / math.sqrt(2))
    assert rows[2]["test acc sd"] > 0  # FF from two initialisations
    assert {p.name for p in (tmp_path / "d" / "checkpoints").iterdir()} == {"seed-0", "seed-1"}
    assert len(list((tmp_path / "d" / "checkpoints" / "seed-1").iterdir())) == 6
    report = (tmp_path / "d" / "report.md").read_text()
    assert "mean ± sd over seeds 0–1" in report and " ± " in report.split("\n")[4]
    bench = recede(
        "bench", *TINY, "--methods", "ff", "mpc:2", "--repeats", "2", "--clock", "cpu", "--out", str(tmp_path / "b")
    )
    assert bench.returncode == 0, bench.stderr
    rows = json.loads((tmp_path / "b" / "metrics.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["BP", "FF", "MPC(h=2)"]
    assert rows[0]["model ratio"] == pytest.approx(1.0) and all(r["model ratio"] > 0 for r in rows)


def test_bpm_time_ratio_covers_its_refreshes(tmp_path: Path) -> None:
    """The frontier row of a BP-modified method pays for the refreshes its run made: its
    ms/step is its step plus one refresh times the refreshes per step of its own history."""
    period = 3
    run = recede(
        "compare",
        *TINY,
        "--methods",
        "ff",
        "bpm-ff",
        "--bpm-period",
        str(period),
        "--bpm-samples",
        "16",
        "--bpm-micro-batch",
        "4",
        "--timing-steps",
        "2",
        "--cosine-batches",
        "1",
        "--out",
        str(tmp_path),
    )
    assert run.returncode == 0, run.stderr
    run = json.loads((tmp_path / "metrics.json").read_text())["runs"][0]
    rows = {r["method"]: r for r in run["rows"]}
    bp, ff, bpm = rows["BP"], rows["FF"], rows["FF+BPM"]
    steps = sum(epoch["steps"] for epoch in run["history"]["FF+BPM"])
    assert steps == 4 and bpm["refreshes"] == math.ceil(steps / period)  # refreshes at steps 0 and 3
    assert bpm["refreshes/step"] == pytest.approx(bpm["refreshes"] / steps)
    assert bpm["refresh ms"] > 0 and ff["refresh ms"] is None and ff["refreshes"] == 0
    assert bpm["ms/step"] == pytest.approx(bpm["step ms"] + bpm["refresh ms"] * bpm["refreshes"] / steps)
    assert ff["ms/step"] == pytest.approx(ff["step ms"])
    assert bpm["time ratio"] == pytest.approx(bpm["ms/step"] / bp["ms/step"])
    assert bpm["time ratio"] > bpm["step ms"] / bp["ms/step"]
    assert bpm["model ratio"] is None and ff["model ratio"] > 0
    assert bpm["state MiB"] > ff["state MiB"]  # the offsets, and the refresh's buffers
    assert bpm["saved MiB"] >= ff["saved MiB"]  # peak over step (FF's) and refresh


def test_rows_of_several_seeds_are_means_with_their_spread() -> None:
    runs = [
        [
            {"method": "BP", "test acc": 0.9, "memory ratio": 1.0, "model ratio": None, "dominated": "no"},
            {"method": "FF", "test acc": 0.6, "memory ratio": 0.25, "model ratio": 1.1, "dominated": "no"},
        ],
        [
            {"method": "BP", "test acc": 0.8, "memory ratio": 1.0, "model ratio": None, "dominated": "yes"},
            {"method": "FF", "test acc": 0.7, "memory ratio": 0.25, "model ratio": 1.3, "dominated": "no"},
        ],
    ]
    bp, ff = mean_rows(runs)
    assert bp["test acc"] == pytest.approx(0.85) and bp["test acc sd"] == pytest.approx(0.1 / math.sqrt(2))
    assert bp["model ratio"] is None and "dominated" not in bp  # dominance is decided on the means
    assert ff["model ratio"] == pytest.approx(1.2) and ff["memory ratio sd"] == 0
    cells = spread_cells(ff)
    assert cells["test acc"] == "0.65 ± 0.071" and cells["memory ratio"] == 0.25  # equal in every run: no ±
    assert mean_rows(runs[:1])[1] == {k: v for k, v in runs[0][1].items() if k != "dominated"}


def test_dominated_is_the_pareto_order() -> None:
    rows = [
        {"method": "BP", "memory ratio": 1.0, "time ratio": 1.0, "test acc": 0.9},
        {"method": "A", "memory ratio": 0.5, "time ratio": 1.2, "test acc": 0.8},
        {"method": "B", "memory ratio": 0.6, "time ratio": 1.3, "test acc": 0.8},  # worse than A
        {"method": "C", "memory ratio": 0.5, "time ratio": 1.2, "test acc": 0.8},
    ]  # ties A
    assert dominated(rows, "test acc", higher_is_better=True) == [False, False, True, False]
    loss_rows = [dict(r, **{"test loss": 1 - r.pop("test acc")}) for r in rows]
    assert dominated(loss_rows, "test loss", higher_is_better=False) == [False, False, True, False]


def test_default_method_lists() -> None:
    assert default_methods(15)[:7] == ["bp", "ckpt", "ff", "loco:3", "mpc:4", "mpc:8", "mpc:11"]
    assert demo_methods(15)[:5] == ["bp", "ckpt", "ff", "mpc:5", "mpc:10"]
    assert "mpc:2" in default_methods(4) and all(int(m[4:]) < 4 for m in default_methods(4) if m[:4] == "mpc:")
