"""Options from the command line and from YAML configs, checked against their allowed ranges.

Every subcommand accepts ``--config FILE.yaml``.  The file is a mapping whose keys are the
subcommand's option names (``batch_size`` or ``batch-size``, as in ``--batch-size``); its values
become the parser's defaults, so a flag given on the command line wins.  Each value goes
through the same type and range check as the flag, and a key the subcommand does not have is
an error that names it and lists the keys that exist.  When the run starts, :func:`save_resolved`
writes every option's final value to ``config.yaml`` next to the results, a file that
``--config`` reads back to repeat the run.

A flag replaces the file's value, lists included: ``method: [mpc:4]`` in the file and
``--method ff`` on the command line run only ``ff``.  ``resume`` and ``overwrite`` say what to
do with the ``--out`` folder, not what to compute, so ``config.yaml`` leaves them out.

The value types (:func:`int_range`, :func:`positive_float`, ...) raise
``argparse.ArgumentTypeError`` with the allowed range; argparse prefixes the option's name, and
:class:`Parser` prints that as one line (the usage only for a missing argument).
:func:`key_values` reads ``--model-opt``/``--data-opt`` pairs and :func:`check_keywords` checks
them, or any keyword options, against the parameters and annotations of the function they go to.
"""

from __future__ import annotations

import inspect
import math
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

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


def shown(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters (a message stays one readable line)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


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


def check_keywords(function: Callable[..., Any], options: dict[str, Any], what: str) -> None:
    """Check ``options`` against ``function``'s parameters before calling it: no unknown
    names, every required one given, and each value of its annotated type (an ``int`` option
    takes an integer, a ``float`` a finite number, ``tuple[int, ...]`` a list of integers...).
    Raises ``ValueError`` naming ``what`` (e.g. ``model 'resmlp'``), the option and the type."""
    parameters = inspect.signature(function).parameters
    unknown = sorted(set(options) - set(parameters))
    if unknown:
        raise ValueError(f"{what} has no option(s) {unknown}; it takes {sorted(parameters)}")
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # an annotation that does not evaluate here: check names only
        hints = {}
    missing = [name for name, p in parameters.items() if p.default is p.empty and name not in options]
    if missing:
        needs = ", ".join(f"{name} ({_describe(hints.get(name, Any))})" for name in missing)
        raise ValueError(f"{what} needs option(s) {needs}")
    for name, value in options.items():
        hint = hints.get(name, Any)
        if not _fits(value, hint):
            raise ValueError(f"{what}: option {name} must be {_describe(hint)}, got {shown(value)}")


def _fits(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (tuple, list, Sequence):
        if not isinstance(value, (tuple, list)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args))
        return all(_fits(v, args[0]) for v in value) if args else True
    if isinstance(origin or hint, type):
        return isinstance(value, origin or hint)
    return True  # an annotation this check cannot read (a callable, a type alias): trust it


def _describe(hint: Any, plural: bool = False) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a, plural) for a in args)
    if origin in (tuple, list, Sequence):
        return f"a list of {_describe(args[0], plural=True)}" if args else "a list"
    names = {int: ("an integer", "integers"), float: ("a finite number", "finite numbers"),
             str: ("a string", "strings"), bool: ("true or false", "booleans"),
             type(None): ("null", "nulls"), Any: ("any value", "values")}
    if hint in names:
        return names[hint][plural]
    name = getattr(hint, "__name__", str(hint))
    return f"{name} objects (Python only)" if plural else f"a {name} object (Python only)"


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
    "seeds": (1, 100), "epochs": (1, 100_000), "batch_size": (1, 10_000_000),
    "timing_steps": (1, 100_000), "repeats": (1, 100_000), "cosine_batches": (1, 100_000),
    "batches": (1, 100_000), "threads": (0, 4096), "nproc": (1, 256), "pipeline": (1, 256),
    "micro_batches": (1, 100_000), "checkpoint_every": (0, 1_000_000_000),
    "bpm_period": (1, 1_000_000_000), "bpm_samples": (2, 1_000_000_000), "bpm_micro_batch": (1, 10_000_000),
    "lr": (1e-12, 1e12), "bpm_a": (-1e6, 1e6), "c": (1e-12, 1e12), "M0": (1e-12, 1e30), "lam": (0.0, 1e12),
}
"""The range of every counter and scale that the options' own types leave open, in one place
(:func:`bound_options` applies it): a human-sized bound for counts, so that no value runs for
ever, overflows or trains nothing (an lr of 5e-324).  Integers without an entry stop at
:data:`MAX_INT`."""


_MOVED = ("CONFIG_DEST", "FOLDER_OPTIONS", "ONCE", "Parser", "add_config_option", "bound_options", "check_repeated",
          "config_defaults", "float_range", "int_range", "parse_with_config", "positive_float", "resolved",
          "subcommands")


def __getattr__(name: str) -> Any:
    """The argparse helpers that moved to :mod:`recede.cli.options`, still importable from here."""
    if name in _MOVED:
        from recede.cli import options

        return getattr(options, name)
    raise AttributeError(f"module 'recede.config' has no attribute {name!r}")
