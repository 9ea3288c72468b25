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

import argparse
import math
import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from recede.keywords import check_keywords, shown  # noqa: F401  (moved to the library; re-exported for the CLI)

CONFIG_DEST = "config"
MAX_DEPTH = 16
"""The deepest nesting of lists and mappings a YAML value may have (configs, ``--model-opt``)."""
MAX_STRING = 4096
"""The longest string an option value may be (a path's limit on Linux)."""
MAX_YAML_BYTES = 1 << 20
"""The largest YAML file (config, preset, a results folder's config.yaml) read."""
MAX_INT = 2**31 - 1
"""The bound of an integer option that states no smaller one: nothing a run counts comes near it."""
FOLDER_OPTIONS = ("resume", "overwrite")  # what to do with --out: not saved in config.yaml
_NOT_OPTIONS = {"help", "command", "run", CONFIG_DEST}


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line, ``PROG: error: MESSAGE`` (exit 2); the
    usage is printed too only when a required argument is missing.  Options are not
    abbreviated (``--c`` is not ``--config``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> typing.NoReturn:
        if message.startswith("the following arguments are required"):
            self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {one_line(message)}\n")


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


def int_range(low: int, high: int | None = None, *, top: int = MAX_INT) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high].  With ``high`` None the bound is ``top``
    (:data:`MAX_INT` unless given), which the message names only for a value above it."""
    allowed = f"an integer ≥ {low}" if high is None else f"an integer in [{low}, {high}]"
    top = top if high is None else high

    def parse(text: str) -> int:
        try:
            value = int(text) if len(str(text)) <= 40 else None
        except (TypeError, ValueError):
            value = None
        if value is None:
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {shown(text)}")
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {value}")
        if value > top:
            raise argparse.ArgumentTypeError(f"must be an integer in [{low}, {top}], got {shown(value, 40)}")
        return value

    parse.__name__ = "int"
    parse.low, parse.high, parse.top = low, high, top  # type: ignore[attr-defined]
    return parse


def float_range(low: float, high: float, low_open: bool = False, high_open: bool = False
                ) -> Callable[[str], float]:
    """An argparse type: a float in the interval from ``low`` to ``high`` (open ends optional)."""
    if high == math.inf:
        allowed = f"a number {'>' if low_open else '≥'} {low:g}"
    else:
        allowed = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def parse(text: str) -> float:
        try:
            value = float(text) if len(str(text)) <= 400 else None
        except (TypeError, ValueError, OverflowError):
            value = None
        if value is None:
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {shown(text)}")
        below = value <= low if low_open else value < low
        above = value >= high if high_open else value > high
        if below or above or value != value:
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {value:g}")
        return value

    parse.__name__ = "float"
    parse.low, parse.high, parse.low_open, parse.high_open = low, high, low_open, high_open  # type: ignore[attr-defined]
    return parse


positive_float = float_range(0.0, math.inf, low_open=True, high_open=True)
"""An argparse type: a float > 0."""


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


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """Give every subcommand of ``parser`` a ``--config FILE.yaml`` option."""
    for sub in subcommands(parser).values():
        sub.add_argument("--config", dest=CONFIG_DEST, default=None, metavar="FILE.yaml",
                         help="YAML file of option values (keys = option names); flags win")


def parse_with_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``; when it names ``--config``, that file's values are the defaults.

    A repeatable flag (``--method``, ``--model-opt``) given on the command line replaces the
    file's list instead of adding to it.  Raises ``FileNotFoundError`` for a missing file and
    ``ValueError`` for a key the subcommand lacks or a value outside its option's range.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    subs = subcommands(parser)
    name = next((a for a in argv if a in subs), None)
    defaults: dict[str, Any] = {}
    if name is not None:
        pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        pre.add_argument("--config", dest=CONFIG_DEST, default=None)
        path = pre.parse_known_args(argv[argv.index(name) + 1:])[0].config
        if path is not None:
            defaults = _use_config(subs[name], Path(path))
        check_repeated(subs[name], argv[argv.index(name) + 1:])
    args = parser.parse_args(argv)
    for dest, default in defaults.items():
        given = getattr(args, dest)
        if isinstance(default, list) and given is not default:  # argparse appended the flags
            setattr(args, dest, given[len(default):])
    return args


def _use_config(sub: argparse.ArgumentParser, path: Path) -> dict[str, Any]:
    """Make the values in ``path`` the defaults of ``sub`` (positionals become optional);
    return them."""
    defaults = config_defaults(sub, path)
    sub.set_defaults(**defaults)
    for action in sub._actions:
        if not action.option_strings and action.dest in sub._defaults:
            action.nargs = "?"  # a positional given by the file may be left off the command line
            action.default = sub._defaults[action.dest]
    return defaults


def config_defaults(sub: argparse.ArgumentParser, path: Path) -> dict[str, Any]:
    """The option values in the YAML file ``path``, type- and range-checked for ``sub``."""
    name = repr(str(path))
    if not path.exists():
        raise FileNotFoundError(f"config file {name} does not exist")
    if not path.is_file():
        raise ValueError(f"config file {name} is not a file")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ValueError(f"config file {name} cannot be read: {err.strerror or err}") from None
    values = load_yaml(raw, f"config file {name}") or {}
    if not isinstance(values, dict):
        raise ValueError(f"config file {name} must be a mapping of option names to values")
    actions = {a.dest: a for a in sub._actions if a.dest not in _NOT_OPTIONS}
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(values) - set(actions))
    if unknown:
        raise ValueError(f"config file {name}: unknown option(s) {', '.join(unknown)}; "
                         f"'{sub.prog}' takes: {', '.join(sorted(actions))}")
    return {key: _checked(actions[key], value, path) for key, value in values.items()}


def yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error in one line: the problem and where it is."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    mark = getattr(err, "problem_mark", None)
    return problem + (f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "")


def _checked(action: argparse.Action, value: Any, path: Path) -> Any:
    """``value`` converted and checked as argparse would check the flag's text."""
    where = f"config file {str(path)!r}: option {action.dest}"
    if value is None:
        if action.default is None and action.option_strings:
            return None  # an option whose default is "not given" (e.g. --bpm-period)
        raise ValueError(f"{where} cannot be null; give a value or leave the key out "
                         f"(default {action.default!r})")
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {shown(value)}")
        return value
    if action.nargs == "?" and isinstance(value, bool):  # a flag with an optional value
        return action.const if value else action.default
    many = isinstance(action, argparse._AppendAction) or action.nargs in ("+", "*")
    if many:
        items = value if isinstance(value, list) else [value]
        return [_one(action, item, where) for item in items]
    return _one(action, value, where)


def _one(action: argparse.Action, value: Any, where: str) -> Any:
    if isinstance(value, (list, dict)):
        many = isinstance(action, argparse._AppendAction) or action.nargs in ("+", "*")
        wanted = (f"a list of {action.metavar} items" if action.metavar else "a list of values") \
            if many else "one value"
        raise ValueError(f"{where} takes {wanted}, got {shown(value)}")
    text = value if isinstance(value, str) else str(value)
    if not callable(action.type):  # None: the text itself
        value = text
    else:
        try:
            value = action.type(text)
        except (argparse.ArgumentTypeError, TypeError, ValueError) as err:
            raise ValueError(f"{where} {err}") from None
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"{where} must be one of {', '.join(map(str, action.choices))}, got {shown(value)}")
    return value


def resolved(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """The options of a parsed command as a plain mapping (what ``config.yaml`` holds): the
    subcommand's own options only, not attributes a command adds to ``args`` at run time."""
    options = {a.dest for a in subcommands(parser)[args.command]._actions} - _NOT_OPTIONS - set(FOLDER_OPTIONS)
    return {k: v for k, v in vars(args).items() if k in options}


def save_resolved(command: str, options: dict[str, Any], folder: str | Path) -> Path:
    """Write a command's resolved ``options`` (:func:`resolved`) to ``folder/config.yaml``."""
    path = Path(folder) / "config.yaml"
    path.write_text(f"# recede {command} --config {path}\n" + yaml.safe_dump(options, sort_keys=True))
    return path


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommand parsers of ``parser`` by name."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise ValueError("the parser has no subcommands")


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


def bound_options(parser: argparse.ArgumentParser, bounds: dict[str, tuple[float, float]] = BOUNDS) -> None:
    """Give every option of ``parser``'s subcommands named in ``bounds`` (by dest) that range,
    keeping its type (integer or number) and, for a number, whether its ends are open."""
    for sub in subcommands(parser).values():
        for action in sub._actions:
            if action.dest not in bounds or action.type is None:
                continue
            low, high = bounds[action.dest]
            if getattr(action.type, "__name__", "") == "int":
                action.type = int_range(int(low), top=int(high))
            elif getattr(action.type, "__name__", "") == "float":
                action.type = float_range(low, high)


ONCE = ("out", CONFIG_DEST)
"""Options that name a place and may be given once: ``--out a --out b`` would write to b
without a word about a.  Any other single-valued option given twice takes its last value,
as argparse does (a script may append an override)."""


def check_repeated(sub: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """Refuse an option of :data:`ONCE` given twice with different values."""
    seen: dict[str, list[str]] = {}
    for i, token in enumerate(argv):
        if token == "--":
            break
        option, eq, value = token.partition("=")
        action = sub._option_string_actions.get(option)
        if action is None or action.dest not in ONCE:
            continue
        given = value if eq else (argv[i + 1] if i + 1 < len(argv) else "")
        seen.setdefault(action.option_strings[-1], []).append(given)
    for option, values in seen.items():
        if len(set(values)) > 1:
            raise ValueError(f"{option} given {len(values)} times ({', '.join(shown(v, 40) for v in values)}); "
                             "give it once")
