"""Checking keyword options against the function they configure: :func:`check_keywords`.

A model builder's or dataset loader's options arrive as plain values (from Python, YAML or
``--model-opt key=value``); this checks them against the function's parameters and type
annotations before it is called, so a wrong name or type is one line naming the option.  It is
library code (the model and data registries use it) and reads nothing from the command line.
"""

from __future__ import annotations

import inspect
import math
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any


def shown(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters (a message stays one readable line)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


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
    names = {
        int: ("an integer", "integers"),
        float: ("a finite number", "finite numbers"),
        str: ("a string", "strings"),
        bool: ("true or false", "booleans"),
        type(None): ("null", "nulls"),
        Any: ("any value", "values"),
    }
    if hint in names:
        return names[hint][plural]
    name = getattr(hint, "__name__", str(hint))
    return f"{name} objects (Python only)" if plural else f"a {name} object (Python only)"
