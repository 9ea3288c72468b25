"""Tables and files for results: Markdown tables, JSON, and a rich table on the terminal."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import textwrap
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def fmt(value: Any, digits: int = 4) -> str:
    """A table cell: floats to ``digits`` significant figures, None as n/a."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def mean_sd(values: Sequence[float | None]) -> tuple[float, float] | None:
    """Mean and sample standard deviation of the values that are not None or NaN (sd 0 for
    one value); None when there are none."""
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not xs:
        return None
    mean = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return mean, sd


def mean_spread(values: Sequence[float | None], digits: int = 3) -> str:
    """``"mean ± sd"`` of :func:`mean_sd` as a table cell (``n/a`` when there is no value)."""
    stats = mean_sd(values)
    if stats is None:
        return "n/a"
    return f"{stats[0]:.{digits}g} ± {stats[1]:.2g}"


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A GitHub Markdown table of ``rows`` restricted to ``columns``."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def pm(mean: float | None, sd: float | None) -> str:
    """``mean ± sd`` for a terminal cell: sd to one significant figure (two when it starts with
    a 1), the mean to the same decimal place but at most 4 significant figures; ``fmt(mean)``
    when there is no spread."""
    if mean is None or sd is None or not sd or not math.isfinite(sd) or not math.isfinite(mean):
        return fmt(mean)
    sd = abs(sd)
    place = -math.floor(math.log10(sd))  # decimals that show sd's first significant digit
    if sd * 10**place < 1.95:  # a leading 1 (after rounding): keep a second figure
        place += 1
    if place > 4:  # a tiny spread: the mean to 4 significant figures, the spread in e-notation
        return f"{fmt(mean)} ± {sd:.1g}"
    mean_places = 3 - math.floor(math.log10(abs(mean))) if mean else place
    decimals = max(0, min(place, mean_places))
    mean_text = f"{round(mean, min(place, mean_places)) + 0.0:.{decimals}f}"  # + 0.0: no "-0.00"
    return f"{mean_text} ± {round(sd, place):.{max(place, 0)}f}"


def terminal_cell(row: dict[str, Any], column: str) -> str:
    """The terminal text of ``row[column]``: :func:`pm` when the row has ``"<column> sd"`` (the
    rows of several seeds), else :func:`fmt`."""
    value = row.get(column)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and f"{column} sd" in row:
        return pm(float(value), row[f"{column} sd"])
    return fmt(value)


def terminal_width() -> int:
    """The terminal's width: ``COLUMNS`` when set (as the shell exports it), else the
    terminal's own, else 80."""
    import shutil

    return max(20, shutil.get_terminal_size((80, 24)).columns)


def _column_width(column: str, cells: Sequence[dict[str, str]]) -> int:
    """A column's width: its widest cell or the longest word of its header (headers wrap)."""
    return max([len(w) for w in column.split()] + [len(cell[column]) for cell in cells])


def fit_columns(
    cells: Sequence[dict[str, str]], columns: Sequence[str], essential: Sequence[str], width: int
) -> list[str]:
    """The columns that fit ``width`` terminal columns without cutting a cell: every essential
    one, then the others in order while they fit, in the order of ``columns``."""
    chosen = {c for c in columns if c in essential}
    used = 1 + sum(_column_width(c, cells) + 3 for c in chosen)  # "│ cell " per column, one "│" more
    for c in columns:
        if c not in chosen and used + _column_width(c, cells) + 3 <= width:
            chosen.add(c)
            used += _column_width(c, cells) + 3
    return [c for c in columns if c in chosen]


def _wrap(header: str, width: int) -> list[str]:
    lines: list[str] = []
    for word in header.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines or [""]


def render_table(cells: Sequence[dict[str, str]], columns: Sequence[str]) -> list[str]:
    """``cells`` (text) as box-drawn lines, every column as wide as its widest cell, right
    aligned; headers wrap at spaces (bottom aligned) and no cell is ever shortened."""
    widths = [_column_width(c, cells) for c in columns]
    headers = [_wrap(c, w) for c, w in zip(columns, widths)]
    depth = max(len(h) for h in headers)
    headers = [[""] * (depth - len(h)) + h for h in headers]

    def line(texts: Sequence[str]) -> str:
        return "│" + "│".join(f" {t:>{w}} " for t, w in zip(texts, widths)) + "│"

    def rule(left: str, mid: str, right: str) -> str:
        return left + mid.join("─" * (w + 2) for w in widths) + right

    return [
        rule("┌", "┬", "┐"),
        *(line([h[i] for h in headers]) for i in range(depth)),
        rule("├", "┼", "┤"),
        *(line([cell[c] for c in columns]) for cell in cells),
        rule("└", "┴", "┘"),
    ]


def print_table(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[str],
    title: str | None = None,
    essential: Sequence[str] | None = None,
    report: str | Path | None = None,
    width: int | None = None,
    file: Any = None,
) -> list[str]:
    """Print ``rows`` as a table that fits the terminal without cutting a number.

    ``columns`` is every column the caller would show; ``essential`` (default: all of them) are
    always shown, the rest in order while they fit ``width`` (default :func:`terminal_width`,
    which follows ``COLUMNS``).  A cell is never shortened: if the essential columns alone are
    wider than the terminal, the table is printed wider and the terminal wraps it.  When
    columns are left out, a last line names them and ``report`` (the Markdown report that holds
    every column).  Rows with ``"<column> sd"`` entries show ``mean ± sd`` (:func:`pm`).
    Returns the columns shown.
    """
    essential = list(columns) if essential is None else [c for c in essential if c in columns]
    width = terminal_width() if width is None else width
    cells = [{c: terminal_cell(row, c) for c in columns} for row in rows]
    shown = fit_columns(cells, columns, essential, width)
    lines = (textwrap.wrap(title, width) if title else []) + render_table(cells, shown)
    hidden = [c for c in columns if c not in shown]
    if hidden:
        where = f" in {report}" if report is not None else " in the report"
        lines += textwrap.wrap(
            f"{len(hidden)} more column(s){where}: {', '.join(hidden)}",
            width,
            break_long_words=False,
            break_on_hyphens=False,
        )
    print("\n".join(lines), file=file if file is not None else sys.stdout, flush=True)
    return shown


def machine(device: Any = "cpu") -> dict[str, Any]:
    """Where a result was measured, for its JSON: versions, the CPU model and the SIMD level
    torch's kernels use on it, torch's thread count and, on CUDA, the GPU.  Trained numbers
    of convolutional nets repeat to the last digit on one machine but can differ between CPUs
    whose kernels round differently, so a result is only comparable with its machine named."""
    import torch

    from recede import __version__

    cpu = platform.processor() or platform.machine()
    if sys.platform == "linux":
        with open("/proc/cpuinfo") as info:
            fields = dict(line.split(":", 1) for line in info.read().split("\n\n")[0].splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        if "model name" in fields:
            cpu = f"{fields['model name']} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')})"
    facts = {
        "recede": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
    }
    device = torch.device(device)
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
    return facts


@contextmanager
def written_aside(path: Path) -> Iterator[Path]:
    """A temporary name beside ``path`` (same folder, ``.tmp``) for the block to write; renamed
    to ``path`` when the block ends without error.  Either way no ``.tmp`` is left behind, so a
    failed write (disk full, path a folder) leaves ``path`` as it was and no partial file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically (:func:`written_aside`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with written_aside(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str))
