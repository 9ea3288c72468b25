"""Tables and files for results: Markdown tables, JSON, and a rich table on the terminal."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from collections.abc import Sequence
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


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str | None = None) -> None:
    """Print ``rows`` as a rich table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for c in columns:
        table.add_column(c, justify="right")
    for row in rows:
        table.add_row(*(fmt(row.get(c)) for c in columns))
    Console().print(table)


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
    facts = {"recede": __version__, "torch": torch.__version__, "python": platform.python_version(),
             "cpu": cpu, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
             "threads": torch.get_num_threads()}
    device = torch.device(device)
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
    return facts


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, default=str))
        os.replace(tmp, path)
    finally:  # a failed write (disk full, path a folder) leaves no .tmp behind
        tmp.unlink(missing_ok=True)
