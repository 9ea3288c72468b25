"""Options from the command line and from YAML configs, checked against their allowed ranges.

Every subcommand accepts ``--config FILE.yaml``.  The file is a mapping whose keys are the
subcommand's option names (``batch_size`` or ``batch-size``, as in ``--batch-size``); its values
become the parser's defaults, so a flag given on the command line wins.  Each value goes
through the same type and range check as the flag, and a key the subcommand does not have is
an error that names it and lists the keys that exist.  After parsing, :func:`save_resolved`
writes every option's final value to ``config.yaml`` next to the results, a file that
``--config`` reads back to repeat the run.

The value types (:func:`int_range`, :func:`positive_float`, ...) raise
``argparse.ArgumentTypeError`` with the allowed range; argparse prefixes the option's name.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

CONFIG_DEST = "config"
_NOT_OPTIONS = {"help", "command", "run", CONFIG_DEST}


def int_range(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high] (no upper bound when ``high`` is None)."""
    allowed = f"an integer ≥ {low}" if high is None else f"an integer in [{low}, {high}]"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {value}")
        return value

    parse.__name__ = "int"
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
            value = float(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}") from None
        below = value <= low if low_open else value < low
        above = value >= high if high_open else value > high
        if below or above or value != value:
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {value:g}")
        return value

    parse.__name__ = "float"
    return parse


positive_float = float_range(0.0, math.inf, low_open=True, high_open=True)
"""An argparse type: a float > 0."""


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """Give every subcommand of ``parser`` a ``--config FILE.yaml`` option."""
    for sub in _subcommands(parser).values():
        sub.add_argument("--config", dest=CONFIG_DEST, default=None, metavar="FILE.yaml",
                         help="YAML file of option values (keys = option names); flags win")


def parse_with_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``; when it names ``--config``, that file's values are the defaults.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a key the
    subcommand lacks or a value outside its option's range.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    subs = _subcommands(parser)
    name = next((a for a in argv if a in subs), None)
    if name is not None:
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--config", dest=CONFIG_DEST, default=None)
        path = pre.parse_known_args(argv[argv.index(name) + 1:])[0].config
        if path is not None:
            _use_config(subs[name], Path(path))
    return parser.parse_args(argv)


def _use_config(sub: argparse.ArgumentParser, path: Path) -> None:
    """Make the values in ``path`` the defaults of ``sub`` (positionals become optional)."""
    sub.set_defaults(**config_defaults(sub, path))
    for action in sub._actions:
        if not action.option_strings and action.dest in sub._defaults:
            action.nargs = "?"  # a positional given by the file may be left off the command line
            action.default = sub._defaults[action.dest]


def config_defaults(sub: argparse.ArgumentParser, path: Path) -> dict[str, Any]:
    """The option values in the YAML file ``path``, type- and range-checked for ``sub``."""
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"config file {str(path)!r} is not valid YAML: {err}") from None
    if not isinstance(values, dict):
        raise ValueError(f"config file {str(path)!r} must be a mapping of option names to values")
    actions = {a.dest: a for a in sub._actions if a.dest not in _NOT_OPTIONS}
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(values) - set(actions))
    if unknown:
        raise ValueError(f"config file {str(path)!r}: unknown option(s) {', '.join(unknown)}; "
                         f"'{sub.prog}' takes: {', '.join(sorted(actions))}")
    return {key: _checked(actions[key], value, path) for key, value in values.items()}


def _checked(action: argparse.Action, value: Any, path: Path) -> Any:
    """``value`` converted and checked as argparse would check the flag's text."""
    where = f"config file {str(path)!r}: option {action.dest}"
    if value is None:
        return None
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
        return value
    many = isinstance(action, argparse._AppendAction) or action.nargs in ("+", "*")
    if many:
        items = value if isinstance(value, list) else [value]
        return [_one(action, item, where) for item in items]
    if isinstance(value, (list, dict)):
        raise ValueError(f"{where} takes one value, got {value!r}")
    return _one(action, value, where)


def _one(action: argparse.Action, value: Any, where: str) -> Any:
    if action.type is not None:
        try:
            value = action.type(str(value) if not isinstance(value, str) else value)
        except (argparse.ArgumentTypeError, TypeError, ValueError) as err:
            raise ValueError(f"{where} {err}") from None
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"{where} must be one of {', '.join(map(str, action.choices))}, got {value!r}")
    return value


def resolved(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """The options of a parsed command as a plain mapping (what ``config.yaml`` holds): the
    subcommand's own options only, not attributes a command adds to ``args`` at run time."""
    options = {a.dest for a in _subcommands(parser)[args.command]._actions} - _NOT_OPTIONS
    return {k: v for k, v in vars(args).items() if k in options}


def save_resolved(parser: argparse.ArgumentParser, args: argparse.Namespace, folder: str | Path) -> Path:
    """Write the command's resolved options to ``folder/config.yaml`` and return its path."""
    path = Path(folder) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# recede {args.command} --config {path}\n"
                    + yaml.safe_dump(resolved(parser, args), sort_keys=True))
    return path


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise ValueError("the parser has no subcommands")
