"""Pre-flight checks: a command checks everything it was given before it writes anything.

Every subcommand runs in two phases.  First it checks its input and writes nothing: the option
values (argparse and :mod:`recede.config`), the output folder (:func:`check_out`), the device
(:func:`device`), the data and model options (:func:`load_data`, :func:`build_model`), that the
model accepts the data (:func:`probe`), the methods, and for ``--resume`` the checkpoints
(:func:`check_resume`).  A problem is a ``ValueError`` or ``FileNotFoundError`` whose message is
the one line the command prints (exit status 2).  Then :func:`start` begins the run: it moves
the earlier run's files aside when ``--overwrite`` says so and writes ``config.yaml``.  If the
run is then refused after all (exit status 2 before its first training step), the command
line calls :func:`rollback`, which removes what the run wrote and puts the earlier run's
files back; otherwise :func:`commit` deletes them (at the first training step, or when the
command ends).  A refused run therefore leaves every file of an earlier run as it was.
An operating-system error on ``--out`` or a file in it (a name too long, a symlink loop, a
dangling link, ``config.yaml`` being a folder...) is such a refusal, naming the path.

The ``--out`` rules (docs/cli.md):

* the folder is created when the run starts; if it exists it must be a writable folder;
* a folder that holds results (any of :data:`RESULTS`) is refused unless ``--resume``
  (``train``: continue that run) or ``--overwrite`` (replace it) says so;
* ``--resume`` needs a checkpoint of at least one of the methods, ``--resume auto`` resumes if
  one exists and starts afresh otherwise; both refuse a checkpoint or a ``config.yaml``
  written with other options (:data:`recede.runs.run.IDENTITY`).

Under ``--nproc N`` only rank 0 checks and writes the folder (:func:`writes_files`).
"""

from __future__ import annotations

import errno
import importlib.util
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from recede import data, models
from recede.config import key_values, load_yaml, save_resolved
from recede.core.blocks import BlockNet
from recede.keywords import shown
from recede.methods import MethodSpec, parse_method

RESULTS = ("config.yaml", "metrics.json", "report.md", "checkpoints")
"""What marks a folder as holding a run's results."""
REPLACED = RESULTS + ("tensorboard", "loss.png", "frontier.png")
"""What ``--overwrite`` moves aside when the new run starts (:func:`start`), and deletes once
it has begun training (:func:`commit`)."""
FILES = {
    "config.yaml": False,
    "metrics.json": False,
    "report.md": False,
    "loss.png": False,
    "checkpoints": True,
    "tensorboard": True,
}
"""What a run writes in ``--out`` (True: a folder): each must be of that kind if it exists."""


def first_line(err: BaseException | str) -> str:
    """An exception's message as one line (torch's messages often run over several)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__ if isinstance(err, BaseException) else ""


def writes_files() -> bool:
    """True unless this process is a rank other than 0 of a data-parallel run."""
    return os.environ.get("RANK", "0") == "0"


def out_folder(args: Any) -> Path | None:
    """The command's results folder: ``--out``, or ``results/PAPER`` for ``reproduce``."""
    out = getattr(args, "out", None)
    if out is None and getattr(args, "paper", None):
        return Path("results") / args.paper
    return None if out is None else Path(out)


def check_out(args: Any) -> None:
    """Apply the ``--out`` rules of the module docstring to a command's options without
    writing anything."""
    folder = out_folder(args)
    resume, overwrite = getattr(args, "resume", False), getattr(args, "overwrite", False)
    if resume and overwrite:
        raise ValueError("--resume and --overwrite contradict each other: continue the run in --out, or replace it")
    if getattr(args, "out", None) is not None and not str(args.out).strip():
        raise ValueError("--out is empty; name a results folder")
    check_folder(folder, resume, overwrite, hasattr(args, "resume"))


def check_folder(folder: Path | None, resume: bool | str, overwrite: bool, resumable: bool) -> None:
    """Apply the ``--out`` rules of the module docstring to ``folder`` (None: no folder)
    without writing anything; ``resumable``: the run could continue an earlier one."""
    if resume and overwrite:
        raise ValueError("--resume and --overwrite contradict each other: continue the run in --out, or replace it")
    if folder is None or not writes_files():
        return
    try:
        _check_out_folder(folder, bool(resume), overwrite, resumable)
    except OSError as err:  # a name too long, a symlink loop, an unreadable parent...
        where = err.filename if err.filename is not None else folder
        raise ValueError(
            f"--out {shown(str(folder), 200)}: {shown(str(where), 200)}: {err.strerror or type(err).__name__}"
        ) from None


def _check_out_folder(folder: Path, resume: bool, overwrite: bool, resumable: bool) -> None:
    try:
        os.fsencode(str(folder)).decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"--out {shown(str(folder), 200)} is not valid UTF-8; name the folder in UTF-8") from None
    for part in folder.absolute().parts:
        if len(os.fsencode(part)) > 255:
            raise ValueError(f"--out {shown(str(folder), 120)}: the name {shown(part, 40)} is longer than 255 bytes")
    if folder.is_symlink() and not folder.exists():
        raise ValueError(f"--out {folder} is {_broken_link(folder)}")
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {folder} is a file, not a folder")
    existing = folder.absolute()
    while not existing.exists():
        if existing.is_symlink():
            raise ValueError(f"--out {folder}: {existing} is {_broken_link(existing)}")
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"--out {folder}: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):  # the real test; no name appears in the folder
            pass
    except OSError as err:
        raise ValueError(f"--out {folder}: cannot write in {existing} ({err.strerror or err})") from None
    for name, want_dir in FILES.items():  # what the run writes there must be writable as such
        path = folder / name
        if path.is_symlink() and not path.exists():
            raise ValueError(f"--out {folder}: {path} is {_broken_link(path)}")
        if path.exists() and path.is_dir() != want_dir:
            raise ValueError(
                f"--out {folder}: {path} is a {'file' if want_dir else 'folder'}, "
                f"not a {'folder' if want_dir else 'file'}; remove it or choose another --out"
            )
    held = [name for name in RESULTS if (folder / name).exists() or (folder / name).is_symlink()]
    if held and not (resume or overwrite):
        hint = ", --resume to continue it" if resumable else ""
        raise ValueError(
            f"--out {folder} holds the results of an earlier run ({', '.join(held)}); "
            f"pass --overwrite to replace them{hint}, or choose another --out"
        )


def _broken_link(path: Path) -> str:
    """What is wrong with a symbolic link that leads nowhere."""
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "a symbolic link loop"
    return "a dangling symbolic link"


def check_same_run(saved: dict[str, Any], identity: dict[str, Any], source: Path | str) -> None:
    """Refuse to resume from ``source`` (a checkpoint or config.yaml) if it was written with
    other values of the options in ``identity``."""
    differ = sorted(k for k in identity if saved.get(k) != identity[k])
    if differ:
        detail = ", ".join(f"{k}: {shown(saved.get(k), 60)} → {shown(identity[k], 60)}" for k in differ)
        raise ValueError(
            f"--resume: {source} was written by a different run ({detail}); use the same options or another --out"
        )


def check_resume(
    folder: Path,
    identity: dict[str, Any],
    checkpoints: dict[Path, str],
    mode: bool | str,
    net: torch.nn.Module | None = None,
) -> list[Path]:
    """For ``--resume`` (``mode`` True) or ``--resume auto``: check that ``folder``'s
    ``config.yaml`` and every existing checkpoint (path → its method's label) were written with
    the options in ``identity``, and hold a model of ``net``'s names and shapes when ``net``
    is given; return the checkpoints found.  Plain ``--resume`` needs one."""
    if not mode or not writes_files():
        return []
    from recede.runs import checkpoint

    config = folder / "config.yaml"
    if config.is_file():
        try:
            raw = config.read_bytes()
        except OSError as err:
            raise ValueError(f"--resume: {config} cannot be read ({err.strerror or err})") from None
        saved = load_yaml(raw, f"--resume: {config}")
        if not isinstance(saved, dict):
            raise ValueError(f"--resume: {config} is not a recede config (a mapping of options)")
        check_same_run(_typed_options(saved), identity, config)
    found = [path for path in checkpoints if path.exists()]
    for path in found:
        payload = checkpoint.read(path)
        check_same_run(payload["config"], identity | {"method": checkpoints[path]}, path)
        if net is not None:
            checkpoint.check_fits(payload, net=net, source=path)
    if mode is True and not found:
        raise ValueError(
            f"--resume: no checkpoint to resume in {folder / 'checkpoints'} (looked for "
            f"{', '.join(p.name for p in checkpoints)}); run without --resume, or with "
            "--resume auto to resume only if one exists"
        )
    return found


def _typed_options(saved: dict[str, Any]) -> dict[str, Any]:
    """A ``config.yaml``'s options with ``model_opt``/``data_opt`` read into mappings, as
    :meth:`recede.runs.config.RunConfig.identity` holds them."""
    out = dict(saved)
    for key, flag in (("model_opt", "--model-opt"), ("data_opt", "--data-opt")):
        if isinstance(out.get(key), list):
            try:
                out[key] = key_values(out[key], flag)
            except ValueError:
                pass  # not ours: compared as written, so it differs
        elif out.get(key) is None:
            out[key] = {}
    return out


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
        raise ValueError(f"--device {shown(text)} is not a device; use cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        if dev.index not in (None, 0):
            raise ValueError(f"--device {text}: there is one CPU device; use cpu")
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
    the loss by :meth:`BlockNet.check <recede.core.blocks.BlockNet.check>`, which has no side
    effects (eval mode, no gradients; buffers, RNG state and modes as before).  A loss that
    warns about mismatched sizes (PyTorch's losses broadcast with a warning) does not fit
    either.  The batch is drawn inside a forked RNG too (a DataLoader draws a seed)."""
    from recede.runs.train import batches

    with (
        torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
        warnings.catch_warnings(record=True) as caught,
    ):
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


class _Started:
    """What :func:`start` changed in the results folder, so that :func:`rollback` can undo it."""

    def __init__(self, folder: Path, created: bool, aside: Path | None, config: bytes | None) -> None:
        self.folder, self.created, self.aside, self.config = folder, created, aside, config


_started: _Started | None = None
_began = False


def reset() -> None:
    """Forget what an earlier command in this process started (the command line calls this
    first)."""
    global _started, _began
    _started, _began = None, False


def start(args: Any) -> None:
    """:func:`start_folder` for a command's options: ``config.yaml`` gets the options that
    ``recede.cli`` resolved (``args.resolved``)."""
    folder = out_folder(args)
    if folder is not None:
        start_folder(folder, getattr(args, "overwrite", False), args.command, args.resolved)


def start_folder(folder: Path, overwrite: bool, command: str, options: dict[str, Any]) -> None:
    """Begin the run, once everything is checked: on rank 0, ``overwrite`` moves the earlier
    run's files (:data:`REPLACED`) into a hidden folder ``OUT/.replaced-<pid>`` (deleted by
    :func:`commit`, put back by :func:`rollback`), and ``config.yaml`` is written with the
    run's ``options``."""
    global _started, _began
    _began = False
    if folder is None or not writes_files():
        return
    top, path = None, folder.absolute()
    while not path.exists() and not path.is_symlink():  # the outermost folder this run creates
        top, path = path, path.parent
    created = top is not None
    aside, config = None, None
    if not created and (folder / "config.yaml").is_file():
        config = (folder / "config.yaml").read_bytes()
    if overwrite and not created:
        moving = [name for name in REPLACED if (folder / name).exists() or (folder / name).is_symlink()]
        if moving:
            aside = folder / f".replaced-{os.getpid()}"
            aside.mkdir()
            for name in moving:
                os.replace(folder / name, aside / name)
    _started = _Started(top if top is not None else folder, created, aside, config)
    folder.mkdir(parents=True, exist_ok=True)
    save_resolved(command, options, folder)


def commit() -> None:
    """The run has begun (its first training step) or ended: delete the earlier run's files
    that :func:`start` moved aside.  Does nothing when there are none, and the second time."""
    global _started, _began
    started, _started, _began = _started, None, True
    if started is not None and started.aside is not None:
        shutil.rmtree(started.aside, ignore_errors=True)


def rollback() -> bool:
    """The run was refused before training: remove what :func:`start` and the run wrote in
    the results folder (:data:`REPLACED`), put the earlier run's files back, and remove the
    folder if the run created it.  Does nothing when :func:`start` did not run or
    :func:`commit` already did.  Returns False once training has begun (:func:`commit`)."""
    global _started
    started, _started = _started, None
    if started is None:
        return not _began
    folder = started.folder
    if started.created:
        shutil.rmtree(folder, ignore_errors=True)
        return True
    for name in REPLACED:
        path = folder / name
        old = None if started.aside is None else started.aside / name
        if old is not None and (old.exists() or old.is_symlink()):
            _remove(path)
            os.replace(old, path)
        elif name == "config.yaml" and started.config is not None:
            path.write_bytes(started.config)
        elif started.aside is not None or name == "config.yaml":
            _remove(path)  # written by the refused run
    if started.aside is not None:
        shutil.rmtree(started.aside, ignore_errors=True)
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
