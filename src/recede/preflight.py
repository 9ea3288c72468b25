"""Pre-flight checks: a command checks everything it was given before it writes anything.

Every subcommand runs in two phases.  First it checks its input and writes nothing: the option
values (argparse and :mod:`recede.config`), the output folder (:func:`check_out`), the device
(:func:`device`), the data and model options (:func:`load_data`, :func:`build_model`), that the
model accepts the data (:func:`probe`), the methods, and for ``--resume`` the checkpoints
(:func:`check_resume`).  A problem is a ``ValueError`` or ``FileNotFoundError`` whose message is
the one line the command prints (exit status 2).  Then :func:`start` begins the run: it removes
the earlier run's files when ``--overwrite`` says so and writes ``config.yaml``.  A refused run
therefore leaves every file of an earlier run as it was.

The ``--out`` rules (docs/cli.md):

* the folder is created when the run starts; if it exists it must be a writable folder;
* a folder that holds results (any of :data:`RESULTS`) is refused unless ``--resume``
  (``train``: continue that run) or ``--overwrite`` (replace it) says so;
* ``--resume`` needs a checkpoint of at least one of the methods, ``--resume auto`` resumes if
  one exists and starts afresh otherwise; both refuse a checkpoint or a ``config.yaml``
  written with other options (:data:`recede.run.IDENTITY`).

Under ``--nproc N`` only rank 0 checks and writes the folder (:func:`writes_files`).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml

from recede import data, models
from recede.blocks import BlockNet
from recede.config import save_resolved, subcommands, yaml_problem
from recede.methods import MethodSpec, parse_method

RESULTS = ("config.yaml", "metrics.json", "report.md", "checkpoints")
"""What marks a folder as holding a run's results."""
REPLACED = RESULTS + ("tensorboard",)
"""What ``--overwrite`` removes when the new run starts (other files are rewritten by it)."""


def first_line(err: BaseException | str) -> str:
    """An exception's message as one line (torch's messages often run over several)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__ if isinstance(err, BaseException) else ""


def writes_files() -> bool:
    """True unless this process is a rank other than 0 of a data-parallel run."""
    return os.environ.get("RANK", "0") == "0"


def add_overwrite_option(parser: argparse.ArgumentParser) -> None:
    """Give every subcommand of ``parser`` that has ``--out`` an ``--overwrite`` flag."""
    for sub in subcommands(parser).values():
        if any(action.dest == "out" for action in sub._actions):
            sub.add_argument("--overwrite", action="store_true",
                             help="replace the results of an earlier run in --out (its config, "
                                  "metrics, report, checkpoints and logs are removed when this "
                                  "run starts)")


def out_folder(args: argparse.Namespace) -> Path | None:
    """The command's results folder: ``--out``, or ``results/PAPER`` for ``reproduce``."""
    out = getattr(args, "out", None)
    if out is None and getattr(args, "paper", None):
        return Path("results") / args.paper
    return None if out is None else Path(out)


def check_out(args: argparse.Namespace) -> None:
    """Apply the ``--out`` rules of the module docstring without writing anything."""
    folder = out_folder(args)
    resume, overwrite = getattr(args, "resume", False), getattr(args, "overwrite", False)
    if resume and overwrite:
        raise ValueError("--resume and --overwrite contradict each other: continue the run in --out, "
                         "or replace it")
    if getattr(args, "out", None) is not None and not str(args.out).strip():
        raise ValueError("--out is empty; name a results folder")
    if folder is None or not writes_files():
        return
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {folder} is a file, not a folder")
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"--out {folder}: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):  # the real test; no name appears in the folder
            pass
    except OSError as err:
        raise ValueError(f"--out {folder}: cannot write in {existing} ({err.strerror or err})") from None
    held = [name for name in RESULTS if (folder / name).exists()]
    if held and not (resume or overwrite):
        resumable = ", --resume to continue it" if hasattr(args, "resume") else ""
        raise ValueError(f"--out {folder} holds the results of an earlier run ({', '.join(held)}); "
                         f"pass --overwrite to replace them{resumable}, or choose another --out")


def check_same_run(saved: dict[str, Any], identity: dict[str, Any], source: Path | str) -> None:
    """Refuse to resume from ``source`` (a checkpoint or config.yaml) if it was written with
    other values of the options in ``identity``."""
    differ = sorted(k for k in identity if saved.get(k) != identity[k])
    if differ:
        detail = ", ".join(f"{k}: {saved.get(k)!r} → {identity[k]!r}" for k in differ)
        raise ValueError(f"--resume: {source} was written by a different run ({detail}); "
                         "use the same options or another --out")


def check_resume(folder: Path, identity: dict[str, Any], checkpoints: dict[Path, str],
                 mode: bool | str) -> list[Path]:
    """For ``--resume`` (``mode`` True) or ``--resume auto``: check that ``folder``'s
    ``config.yaml`` and every existing checkpoint (path → its method's label) were written with
    the options in ``identity``; return the checkpoints found.  Plain ``--resume`` needs one."""
    if not mode or not writes_files():
        return []
    from recede import checkpoint

    config = folder / "config.yaml"
    if config.is_file():
        try:
            saved = yaml.safe_load(config.read_text())
        except yaml.YAMLError as err:
            raise ValueError(f"--resume: {config} is not valid YAML: {yaml_problem(err)}") from None
        except UnicodeDecodeError:
            raise ValueError(f"--resume: {config} is not a text file") from None
        if not isinstance(saved, dict):
            raise ValueError(f"--resume: {config} is not a recede config (a mapping of options)")
        check_same_run(saved, identity, config)
    found = [path for path in checkpoints if path.exists()]
    for path in found:
        check_same_run(checkpoint.read(path)["config"], identity | {"method": checkpoints[path]}, path)
    if mode is True and not found:
        raise ValueError(f"--resume: no checkpoint to resume in {folder / 'checkpoints'} (looked for "
                         f"{', '.join(p.name for p in checkpoints)}); run without --resume, or with "
                         "--resume auto to resume only if one exists")
    return found


def methods(names: list[str]) -> list[MethodSpec]:
    """The methods named, each once (two runs of one method would share a checkpoint)."""
    specs = [parse_method(str(name)) for name in names]
    labels = [s.label for s in specs]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise ValueError(f"method(s) {', '.join(twice)} given more than once")
    return specs


def device(text: str) -> torch.device:
    """``--device``: ``cpu``, or ``cuda``/``cuda:N`` for a GPU this machine has."""
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"--device {text!r} is not a device; use cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise ValueError(f"--device {text}: recede trains on cpu or cuda, not {dev.type}")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if (dev.index or 0) >= count:
        raise ValueError(f"--device {text}: this machine has {count} CUDA device(s)")
    return dev


def _described(name: str, options: dict[str, Any]) -> str:
    given = ", ".join(f"{k}={v!r}" for k, v in options.items())
    return f"{name!r}" + (f" with {given}" if given else "")


def load_data(name: str, options: dict[str, Any]) -> data.Task:
    """The dataset ``name`` with ``options``, type-checked; a loader that fails on the given
    values is named with them, and so is an empty test split."""
    try:
        task = data.load(name, **options)
    except (ValueError, FileNotFoundError):
        raise
    except Exception as err:  # a value the loader could not use: bad input, named with it
        raise ValueError(f"dataset {_described(name, options)} cannot be loaded: {first_line(err)}") from None
    if len(task.test) == 0:  # type: ignore[arg-type]  # torch's Dataset type has no __len__; ours all do
        raise ValueError(f"dataset {_described(name, options)} has an empty test split")
    return task


def build_model(name: str, task: data.Task, options: dict[str, Any], device: torch.device) -> BlockNet:
    """The model ``name`` for ``task`` with ``options``, type-checked, on ``device``; a builder
    that fails on the given values, or a layer of size 0, is named with them.  Warnings of the
    attempt are not shown (the run's own build shows them)."""
    what = f"model {_described(name, options)}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = models.build(name, task, **options).to(device)
    except FileNotFoundError:
        raise
    except ValueError as err:
        if str(err).startswith(("model ", "unknown model")):
            raise
        raise ValueError(f"{what}: {err}") from None
    except Exception as err:  # a value the builder could not use: bad input, named with it
        raise ValueError(f"{what} cannot be built: {first_line(err)}") from None
    empty = [n for n, p in net.named_parameters() if p.numel() == 0]
    if empty:
        raise ValueError(f"{what} has a layer of size 0 ({empty[0]})")
    return net


def probe(net: BlockNet, task: data.Task, device: torch.device, what: str = "the model") -> None:
    """Check that ``net`` accepts ``task``: two training samples through every block, head and
    the loss by :meth:`BlockNet.check <recede.blocks.BlockNet.check>`, which has no side
    effects (eval mode, no gradients; buffers, RNG state and modes as before).  A loss that
    warns about mismatched sizes (PyTorch's losses broadcast with a warning) does not fit
    either.  The batch is drawn inside a forked RNG too (a DataLoader draws a seed)."""
    from recede.train import batches

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x, y = next(iter(batches(task.train, 2)))
        where = f"{what} does not fit dataset {task.name!r} (inputs {tuple(x.shape[1:])}, {task.kind})"
        try:
            net.check(x.to(device), y.to(device))
        except Exception as err:  # any failure on the data is a mismatch of model and data
            raise ValueError(f"{where}: {first_line(err)}") from None
    sizes = [w for w in caught if "target size" in str(w.message)]
    if sizes:
        raise ValueError(f"{where}: {first_line(sizes[0].message)}")


def load_state(net: torch.nn.Module, path: str | Path, option: str) -> None:
    """Load the state dict in the file ``path`` into ``net``; a missing, unreadable or
    ill-fitting file is named with ``option``."""
    from recede.models.weights import read_state_dict

    try:
        state = read_state_dict(path)
    except (FileNotFoundError, ValueError) as err:
        raise type(err)(f"{option}: {err}") from None
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        problem = " ".join(str(err).split())
        problem = problem if len(problem) < 300 else problem[:300] + " …"
        raise ValueError(f"{option}: {path} does not fit the model: {problem}") from None


def require_package(module: str, option: str, extra: str) -> None:
    """``option`` needs the package ``module``: say what to install when it is missing."""
    if importlib.util.find_spec(module) is None:
        raise ValueError(f"{option} needs the {module} package: pip install 'recede[{extra}]'")


def start(args: argparse.Namespace) -> None:
    """Begin the run, once everything is checked: on rank 0, ``--overwrite`` removes the
    earlier run's files (:data:`REPLACED`) and ``config.yaml`` is written with the options
    that ``recede.cli`` resolved (``args.resolved``)."""
    folder = out_folder(args)
    if folder is None or not writes_files():
        return
    if getattr(args, "overwrite", False):
        for name in REPLACED:
            path = folder / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    save_resolved(args.command, args.resolved, folder)
