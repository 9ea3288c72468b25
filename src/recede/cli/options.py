"""The option helpers every subcommand shares: argparse types with ranges (:func:`int_range`,
:func:`float_range`), ``--config FILE.yaml`` (:func:`parse_with_config`; a file's values become
the defaults, a flag wins), the ranges of :data:`recede.config.BOUNDS` (:func:`bound_options`),
one-line errors (:class:`Parser`), ``--overwrite``, and the workload and comparison options of
``train``, ``compare``, ``demo`` and ``bench``.  Moved here from ``recede.config`` (which keeps
the names importable) so that no library module imports argparse.
"""

from __future__ import annotations

import argparse
import math
import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from recede import data, models
from recede.bpm.scalars import RULES
from recede.config import BOUNDS, MAX_INT, load_yaml, one_line
from recede.keywords import shown
from recede.measure.usage import CLOCKS

CONFIG_DEST = "config"


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


def float_range(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Callable[[str], float]:
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


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """Give every subcommand of ``parser`` a ``--config FILE.yaml`` option."""
    for sub in subcommands(parser).values():
        sub.add_argument(
            "--config",
            dest=CONFIG_DEST,
            default=None,
            metavar="FILE.yaml",
            help="YAML file of option values (keys = option names); flags win",
        )


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
        path = pre.parse_known_args(argv[argv.index(name) + 1 :])[0].config
        if path is not None:
            defaults = _use_config(subs[name], Path(path))
        check_repeated(subs[name], argv[argv.index(name) + 1 :])
    args = parser.parse_args(argv)
    for dest, default in defaults.items():
        given = getattr(args, dest)
        if isinstance(default, list) and given is not default:  # argparse appended the flags
            setattr(args, dest, given[len(default) :])
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
        raise ValueError(
            f"config file {name}: unknown option(s) {', '.join(unknown)}; "
            f"'{sub.prog}' takes: {', '.join(sorted(actions))}"
        )
    return {key: _checked(actions[key], value, path) for key, value in values.items()}


def _checked(action: argparse.Action, value: Any, path: Path) -> Any:
    """``value`` converted and checked as argparse would check the flag's text."""
    where = f"config file {str(path)!r}: option {action.dest}"
    if value is None:
        if action.default is None and action.option_strings:
            return None  # an option whose default is "not given" (e.g. --bpm-period)
        raise ValueError(f"{where} cannot be null; give a value or leave the key out (default {action.default!r})")
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
        wanted = (
            (f"a list of {action.metavar} items" if action.metavar else "a list of values") if many else "one value"
        )
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


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommand parsers of ``parser`` by name."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise ValueError("the parser has no subcommands")


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
            raise ValueError(
                f"{option} given {len(values)} times ({', '.join(shown(v, 40) for v in values)}); give it once"
            )


def add_overwrite_option(parser: argparse.ArgumentParser) -> None:
    """Give every subcommand of ``parser`` that has ``--out`` an ``--overwrite`` flag."""
    for sub in subcommands(parser).values():
        if any(action.dest == "out" for action in sub._actions):
            sub.add_argument(
                "--overwrite",
                action="store_true",
                help="replace the results of an earlier run in --out (its config, "
                "metrics, report, checkpoints and logs are removed when this "
                "run starts)",
            )


def add_workload_options(
    p: argparse.ArgumentParser,
    *,
    model: str = "resmlp",
    data_name: str = "trig",
    epochs: int = 5,
    batch_size: int = 100,
    lr: float = 0.01,
    out: str = "results/train",
) -> None:
    """The model, data, optimizer and output options shared by train, compare and demo."""
    p.add_argument("--model", default=model, help=f"one of: {', '.join(models.available())}")
    p.add_argument("--data", default=data_name, help=f"one of: {', '.join(data.available())}")
    p.add_argument(
        "--model-opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model builder option, e.g. width=32 (repeatable)",
    )
    p.add_argument(
        "--data-opt", action="append", default=[], metavar="KEY=VALUE", help="dataset option, e.g. n=2000 (repeatable)"
    )
    p.add_argument("--epochs", type=int_range(1), default=epochs)
    p.add_argument("--batch-size", type=int_range(1), default=batch_size)
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"])
    p.add_argument("--lr", type=positive_float, default=lr)
    p.add_argument("--momentum", type=float_range(0.0, 1.0, high_open=True), default=0.0)
    p.add_argument(
        "--lr-decay",
        type=float_range(0.0, 1.0, low_open=True),
        default=0.9,
        help="Paper A's rule: lr × this whenever the epoch loss rises (1 disables)",
    )
    p.add_argument("--seed", type=int_range(0), default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument(
        "--threads",
        type=int_range(0),
        default=0,
        help="CPU threads for torch (0: torch's default); 1 is fastest for tiny models",
    )
    p.add_argument("--out", default=out, help="results folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--init",
        default=None,
        metavar="FILE",
        help="start every run from this state dict (a `recede pretrain` checkpoint, or "
        "your own .safetensors or weights-only .pt); names and shapes must match "
        "the model except --init-skip (docs/finetune.md)",
    )
    p.add_argument(
        "--init-skip",
        action="append",
        default=None,
        metavar="PATTERN",  # None: a run before --init resumes
        help="with --init: the model's keys matching this glob (e.g. 'heads.*') keep "
        "their fresh initialisation (repeatable)",
    )
    bpm = p.add_argument_group("BP-modified methods (bpm-...; Paper B Algorithm 1)")
    bpm.add_argument(
        "--bpm-period",
        type=int_range(1),
        default=None,
        metavar="K",
        help="steps between offset refreshes (default: one epoch)",
    )
    bpm.add_argument(
        "--bpm-samples",
        type=int_range(2),
        default=None,
        metavar="B'",
        help="samples per refresh (default: 1%% of K·B, at least two micro-batches)",
    )
    bpm.add_argument(
        "--bpm-micro-batch",
        type=int_range(1),
        default=8,
        metavar="b'",
        help="micro-batch size of a refresh (its memory is BP's on b' samples)",
    )
    bpm.add_argument(
        "--bpm-rule",
        default="robust",
        choices=list(RULES),
        help="robust (default: a = 1, λ only where a held-out test says the offset pays; lost to the local "
        "method in none of the study's 15 cases but can elsewhere, docs/paper-b.md), paper (Paper B eqs. 16-19 "
        "as printed), bias (λ = 0, a = a_bias, Table 3) or fixed (--bpm-a, --bpm-lam)",
    )
    bpm.add_argument(
        "--bpm-a",
        type=float_range(-math.inf, math.inf, True, True),
        default=None,
        metavar="A",
        help="the fixed scale a of the local gradient (with --bpm-rule fixed)",
    )
    bpm.add_argument(
        "--bpm-lam",
        type=float_range(0.0, 1.0),
        default=None,
        metavar="λ",
        help="the fixed weight λ ∈ [0, 1] of the offset (with --bpm-rule fixed)",
    )


def add_compare_options(p: argparse.ArgumentParser, defaults: str) -> None:
    """The options of the measurement that ``compare`` and ``demo`` share."""
    p.add_argument(
        "--methods", nargs="+", default=None, metavar="METHOD", help=f"methods to compare (default: {defaults}, bpm-ff)"
    )
    p.add_argument(
        "--timing-steps",
        type=int_range(1),
        default=10,
        help="steps (and refreshes) timed per method (the median is reported)",
    )
    p.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="time in wall seconds, or in this process's CPU seconds (steady on a shared CPU)",
    )
    p.add_argument(
        "--cosine-batches", type=int_range(1), default=4, help="batches over which cos θ to the BP gradient is averaged"
    )
    p.add_argument(
        "--seeds",
        type=int_range(1),
        default=1,
        help="run the whole comparison for seeds --seed … --seed + N − 1 and report "
        "mean ± sd over them (default: %(default)s)",
    )
