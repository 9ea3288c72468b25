"""The terminal table: it fits the terminal (``COLUMNS``) without cutting a number."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SRC, TINY_DEMO

from recede.runs.compare import essential_columns, frontier_columns, mean_rows, terminal_columns
from recede.runs.reports import fit_columns, pm, print_table

# the demo's README table, three seeds per method: (test loss, test acc, time, model, memory, cos θ, ms/step)
DEMO = {
    "BP": [
        (0.07, 0.9721, 1.0, 1.0, 1.0, 1.0, 11.1),
        (0.12, 0.9610, 1.0, 1.0, 1.0, 0.999999, 12.6),
        (0.165, 0.9610, 1.0, 1.0, 1.0, 1.0, 11.3),
    ],
    "BP+ckpt": [
        (0.07, 0.9721, 1.29, 1.22, 0.5708, 1.0, 15.1),
        (0.12, 0.9610, 1.4, 1.27, 0.5708, 1.0, 15.9),
        (0.165, 0.9610, 1.31, 1.24, 0.5708, 0.999999, 15.5),
    ],
    "FF": [
        (0.19, 0.8134, 1.0, 1.13, 0.2491, 0.31, 12.5),
        (0.52, 0.9367, 1.2, 1.14, 0.2491, 0.36, 14.0),
        (0.40, 0.8767, 1.23, 1.15, 0.2491, 0.34, 13.3),
    ],
    "MPC(h=3)": [
        (0.2, 0.922, 1.55, 1.58, 0.5724, 0.45, 18.4),
        (0.3, 0.955, 1.57, 1.6, 0.5724, 0.50, 18.6),
        (1.02, 0.719, 1.71, 1.63, 0.5724, 0.56, 19.1),
    ],
    "MPC(h=6)": [
        (0.12, 0.9721, 1.5, 1.63, 0.8563, 0.42, 18.5),
        (0.2, 0.9220, 1.85, 1.67, 0.8563, 0.6, 21.2),
        (0.27, 0.9136, 1.97, 1.7, 0.8563, 0.59, 22.0),
    ],
    "FF+BPM": [
        (0.13, 0.7744, 3.9, None, 0.2515, 0.33, 44.1),
        (0.66, 0.9617, 3.4, None, 0.2515, 0.44, 41.4),
        (0.35, 0.8797, 3.8, None, 0.2515, 0.39, 43.1),
    ],
}


def demo_rows() -> list[dict]:
    """Rows shaped as ``compare`` makes them: each seed's measured row, then ``mean_rows``."""
    runs = []
    for seed in range(3):
        rows = []
        for method, per_seed in DEMO.items():
            loss, acc, time, model, memory, cos, ms = per_seed[seed]
            rows.append(
                {
                    "method": method,
                    "train loss": loss / 2,
                    "test loss": loss,
                    "test acc": acc,
                    "run ms/step": ms * 1.1,
                    "saved MiB": memory * 0.52,
                    "state MiB": 2.468 * memory,
                    "cuda peak MiB": None,
                    "ms/step": ms,
                    "step ms": ms,
                    "time ratio": time,
                    "refresh ms": 414.8 + seed if method == "FF+BPM" else None,
                    "memory ratio": memory,
                    "model ratio": model,
                    "cos θ": cos,
                    "refreshes": 26,
                }
            )
        runs.append(rows)
    rows = mean_rows(runs)
    for row in rows:
        row["dominated"] = "no"
    return rows


def render(rows, columns, essential, width=None, report="results/demo/report.md") -> tuple[str, list[str]]:
    out = io.StringIO()
    shown = print_table(
        rows,
        columns,
        title="resnet62 on digits, 8 epochs, cpu clock, mean ± sd over seeds 0–2",
        essential=essential,
        report=report,
        width=width,
        file=out,
    )
    return out.getvalue(), shown


def body_lines(text: str) -> list[str]:
    """The table's rows: the lines between the header's rule and the bottom rule."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("├"))
    end = next(i for i, line in enumerate(lines) if line.startswith("└"))
    return lines[start + 1 : end]


def test_pm_rounds_the_mean_to_the_spread() -> None:
    assert pm(0.9647, 0.0085) == "0.965 ± 0.009"
    assert pm(1.333, 0.061) == "1.33 ± 0.06"
    assert pm(414.8, 18) == "415 ± 18"  # a leading 1 keeps two figures
    assert pm(1.0, 1e-6) == "1 ± 1e-06"
    assert pm(0.5, 0.0) == "0.5" and pm(-0.004, 0.033) == "0.00 ± 0.03"


@pytest.mark.parametrize("width", [80, 60])
def test_the_demo_table_fits_without_cutting_a_number(monkeypatch, width: int) -> None:
    monkeypatch.setenv("COLUMNS", str(width))
    rows = demo_rows()
    columns = terminal_columns(frontier_columns(["test acc"], cuda=False))
    text, shown = render(rows, columns, essential_columns(["test acc"]))
    assert "…" not in text and "..." not in text
    assert all(len(line) <= width for line in text.splitlines())
    assert {"method", "test acc", "time ratio", "memory ratio"} <= set(shown)
    for line, row in zip(body_lines(text), rows, strict=True):  # one line per method, whole
        assert row["method"] in line
        for column in ("test acc", "time ratio", "memory ratio"):
            assert pm(row[column], row.get(f"{column} sd")) in line
    assert "0.955 ± 0.006" in text or "0.965 ± 0.006" in text  # BP's accuracy as mean ± sd
    hidden = [c for c in columns if c not in shown]
    assert hidden and f"{len(hidden)} more column(s) in results/demo/report.md: {', '.join(hidden)}" in " ".join(
        text.split()
    )


def test_wider_terminals_show_more_columns() -> None:
    rows = demo_rows()
    columns = terminal_columns(frontier_columns(["test acc"], cuda=False))
    shown = [render(rows, columns, essential_columns(["test acc"]), width=w)[1] for w in (80, 120, 250)]
    assert len(shown[0]) < len(shown[1]) < len(shown[2]) == len(columns)
    assert "more column" not in render(rows, columns, [], width=250)[0]


def test_essential_columns_wider_than_the_terminal_are_printed_whole() -> None:
    rows = [{"method": "MPC(h=3)", "a long header": "123456789.125 ± 0.001", "b": "x" * 50}]
    text, shown = render(rows, ["method", "a long header", "b"], ["method", "a long header", "b"], width=40)
    assert shown == ["method", "a long header", "b"] and "…" not in text
    assert "123456789.125 ± 0.001" in text and "x" * 50 in text


def test_the_lm_table_keeps_bits_per_byte() -> None:
    metric = ["test bits/byte", "test perplexity", "tokens/s"]
    rows = mean_rows(
        [
            [
                {
                    "method": m,
                    "test loss": 2.0 + s / 10 + i,
                    "test bits/byte": 3.1234 + s / 100 + i,
                    "test perplexity": 7.5 + s,
                    "tokens/s": 1234.5 + s,
                    "time ratio": 1.0 + i + s / 50,
                    "memory ratio": 0.5 + i / 10,
                    "model ratio": 1.0,
                    "state MiB": 12.0,
                    "cos θ": 0.9,
                    "ms/step": 10.0,
                    "dominated": "no",
                }
                for i, m in enumerate(["BP", "MPC(h=2)", "FF"])
            ]
            for s in range(3)
        ]
    )
    columns = terminal_columns(frontier_columns(metric, cuda=True))
    text, shown = render(rows, columns, essential_columns(metric), width=80)
    assert "…" not in text and {"method", "test bits/byte", "time ratio", "memory ratio"} <= set(shown)
    assert fit_columns([{c: "1" for c in columns}], columns, [], 10_000) == columns


@pytest.mark.slow
def test_recede_demo_in_80_columns_prints_every_number_whole(tmp_path: Path) -> None:
    """A tiny ``recede demo`` end to end with COLUMNS=80: accuracy, time and memory of every method."""
    env = {**os.environ, "PYTHONPATH": SRC, "COLUMNS": "80"}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "recede",
            "demo",
            *TINY_DEMO,
            "--out",
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    assert "…" not in run.stdout
    assert all(len(line) <= 80 for line in run.stdout.splitlines() if line[:1] in "┌│├└"), run.stdout
    assert all(word in run.stdout for word in ("test", "acc", "time", "memory", "ratio"))
    methods = ["BP", "BP+ckpt", "FF", "MPC(h=2)", "MPC(h=4)", "FF+BPM"]
    body = body_lines(run.stdout)
    assert [line.split("│")[1].strip() for line in body] == methods, run.stdout
    rows = json.loads((tmp_path / "metrics.json").read_text())["rows"]
    for line, row in zip(body, rows):  # accuracy, time and memory of every method, whole
        for column in ("test acc", "time ratio", "memory ratio"):
            assert pm(row[column], row.get(f"{column} sd")) in line, (column, line)
    assert "report.md" in run.stdout
