"""Option values shared by every front-end: YAML read safely, ``key=value`` pairs, and the ranges
of every counter and scale.

:func:`load_yaml` reads a YAML value under the limits below (nesting, string length, file size)
and :func:`check_plain` refuses anything but plain data; :func:`key_values` reads
``--model-opt``/``--data-opt`` pairs; :data:`BOUNDS` states the range of every counter and scale
once (the CLI's option types, :mod:`recede.cli.options`, and the typed run configuration,
:mod:`recede.runs.config`, both apply it); :func:`save_resolved` writes a run's final options to
``config.yaml``, a file that ``--config`` reads back to repeat the run.
:func:`recede.keywords.check_keywords` checks keyword options against the function they go to.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from recede.keywords import shown

MAX_DEPTH = 16
"""The deepest nesting of lists and mappings a YAML value may have (configs, ``--model-opt``)."""
MAX_STRING = 4096
"""The longest string an option value may be (a path's limit on Linux)."""
MAX_YAML_BYTES = 1 << 20
"""The largest YAML file (config, preset, a results folder's config.yaml) read."""
MAX_INT = 2**31 - 1
"""The bound of an integer option that states no smaller one: nothing a run counts comes near it."""


def one_line(text: str, limit: int = 500) -> str:
    """``text`` on one line: line breaks shown as ``\\n``, cut to ``limit`` characters."""
    text = str(text).replace("\r", "\\r").replace("\n", "\\n")
    return text if len(text) <= limit else text[:limit] + " …"


def load_yaml(text: str | bytes, what: str) -> Any:
    """``text`` read as YAML (``yaml.safe_load``: plain values only) and checked by
    :func:`check_plain`; any problem is one ``ValueError`` starting with ``what``."""
    if len(text) > MAX_YAML_BYTES:
        raise ValueError(f"{what} is larger than {MAX_YAML_BYTES // 2**20} MiB")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{what} is not a text file") from None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"{what} is not valid YAML: {yaml_problem(err)}") from None
    except RecursionError:
        raise ValueError(f"{what} is nested more than {MAX_DEPTH} levels deep") from None
    check_plain(value, what)
    return value


def check_plain(value: Any, what: str) -> None:
    """Refuse a value nested more than :data:`MAX_DEPTH` deep or holding a string (or key)
    longer than :data:`MAX_STRING`, before anything recurses into it."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, tuple, dict)):
            if depth >= MAX_DEPTH:
                raise ValueError(f"{what} is nested more than {MAX_DEPTH} levels deep")
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
        elif isinstance(item, (str, bytes)) and len(item) > MAX_STRING:
            raise ValueError(f"{what} holds a string of {len(item)} characters (at most {MAX_STRING})")


def key_values(pairs: Sequence[str], what: str = "option") -> dict[str, Any]:
    """``["width=10", "head=shared"]`` → ``{"width": 10, "head": "shared"}``: each value is read
    as a YAML scalar or list (``widths=[8, 16]``); ``-`` in a key becomes ``_``."""
    out = {}
    for pair in pairs:
        if not isinstance(pair, str):
            raise ValueError(f"{what} {shown(pair)} is not of the form key=value")
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{what} {shown(pair)} is not of the form key=value")
        if len(pair) > MAX_STRING:
            raise ValueError(f"{what} {shown(pair, 40)} is longer than {MAX_STRING} characters")
        out[key.strip().replace("-", "_")] = load_yaml(value, f"{what} {shown(pair, 60)}: the value")
    return out


def yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error in one line: the problem and where it is."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    mark = getattr(err, "problem_mark", None)
    return problem + (f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "")


def save_resolved(command: str, options: dict[str, Any], folder: str | Path) -> Path:
    """Write a command's resolved ``options`` (:func:`resolved`) to ``folder/config.yaml``."""
    path = Path(folder) / "config.yaml"
    path.write_text(f"# recede {command} --config {path}\n" + yaml.safe_dump(options, sort_keys=True))
    return path


BOUNDS: dict[str, tuple[float, float]] = {
    "seed": (0, 2**32 - 1),  # NumPy's seed range; compare's seeds run from --seed on
    "seeds": (1, 100),
    "epochs": (1, 100_000),
    "batch_size": (1, 10_000_000),
    "timing_steps": (1, 100_000),
    "repeats": (1, 100_000),
    "cosine_batches": (1, 100_000),
    "batches": (1, 100_000),
    "threads": (0, 4096),
    "nproc": (1, 256),
    "pipeline": (1, 256),
    "micro_batches": (1, 100_000),
    "checkpoint_every": (0, 1_000_000_000),
    "bpm_period": (1, 1_000_000_000),
    "bpm_samples": (2, 1_000_000_000),
    "bpm_micro_batch": (1, 10_000_000),
    "lr": (1e-12, 1e12),
    "bpm_a": (-1e6, 1e6),
    "c": (1e-12, 1e12),
    "M0": (1e-12, 1e30),
    "weight": (0.0, 1e12),
}
"""The range of every counter and scale that the options' own types leave open, in one place
(:func:`bound_options` applies it): a human-sized bound for counts, so that no value runs for
ever, overflows or trains nothing (an lr of 5e-324).  Integers without an entry stop at
:data:`MAX_INT`."""
