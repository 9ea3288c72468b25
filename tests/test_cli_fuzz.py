"""Fuzz the command line with bad input: every subcommand answers with one line on stderr and
exit status 2, no traceback, and leaves the files of an earlier good run byte for byte.

The table below holds the cases: the issue's, negative and zero values, NaN/inf, unknown YAML
keys and wrong YAML types, missing and corrupt files (configs, checkpoints, weights, data
folders), conflicting flags.  The workload cases (model, data, optimizer, device, output folder,
config file) run on each of ``train``, ``compare``, ``bench`` and ``demo``.  Every case runs
in-process through :func:`recede.cli.main` with the process's stderr captured at the file
descriptor; one case of each distinct code path also runs as a real ``python -m recede``.  A
good ``train`` run is seeded once; every case points ``--out`` at it (with ``--overwrite`` or
``--resume`` so that the check under test is reached) or at a folder that must not appear, and
the whole fixture folder must be unchanged afterwards.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import SRC, tiny_run

from recede.cli import main

TINY = tiny_run()
DEMO = ["--epochs", "1", "--no-progress"]  # resnet62 (3 × 3 blocks, 8/16/32 channels) on digits

# (argv after the subcommand, a fragment of the expected message).  {good}: the seeded run's
# folder; {files}: the folder of prepared files; {new}: a folder that must not be created.
# Unless a case names --out itself, "--out {good} --overwrite" is added.
OUTPUT = [
    (["--out", "{good}"], "holds the results of an earlier run"),
    (["--out", "{files}/plain.txt"], "is a file, not a folder"),
    (["--out", "{files}/plain.txt/sub"], "is a file, not a folder"),
    (["--out", "/proc/recede-out"], "cannot write in /proc"),
    (["--out", ""], "--out is empty"),
]
CONFIG = [  # any subcommand's config file
    (["--config", "{files}/missing.yaml"], "does not exist"),
    (["--config", "{files}"], "is not a file"),
    (["--config", "{files}/invalid.yaml"], "is not valid YAML"),
    (["--config", "{files}/binary.yaml"], "is not a text file"),
    (["--config", "{files}/list.yaml"], "must be a mapping of option names to values"),
    (["--config", "{files}/unknown-key.yaml"], "unknown option(s) colour"),
]
WORKLOAD_CONFIG = [  # wrong YAML types for the options of train, compare, bench and demo
    (["--config", "{files}/opt-mapping.yaml"], "option model_opt takes a list of KEY=VALUE items"),
    (["--config", "{files}/epochs-text.yaml"], "option epochs must be an integer ≥ 1, got 'many'"),
    (["--config", "{files}/epochs-list.yaml"], "option epochs takes one value"),
    (["--config", "{files}/lr-nan.yaml"], "option lr must be a number in [1e-12, 1e+12], got nan"),
    (["--config", "{files}/flag-number.yaml"], "option no_progress must be true or false"),
]
SELECT_CONFIG = [
    (["--config", "{files}/opt-mapping.yaml"], "option model_opt takes a list of KEY=VALUE items"),
    (["--config", "{files}/batches-text.yaml"], "option batches must be an integer ≥ 1, got 'many'"),
    (["--config", "{files}/horizons-list.yaml"], "option horizons takes one value"),
    (["--config", "{files}/eps-nan.yaml"], "option eps must be a number in [0, 1], got nan"),
    (["--config", "{files}/objective-bad.yaml"], "option objective must be one of constraint, weighted"),
]
REPRODUCE_CONFIG = [
    (["--config", "{files}/full-number.yaml"], "option full must be true or false, got 3"),
    (
        ["--config", "{files}/paper-bad.yaml"],
        "option paper must be one of bpm-robustness, paper-a, paper-b, got 'paper-c'",
    ),
    (["--config", "{files}/data-root-list.yaml"], "option data_root takes one value"),
    (["--config", "{files}/opt-mapping.yaml"], "unknown option(s) model_opt"),
]
OPTIONS = [  # option values every workload subcommand checks with argparse
    (["--epochs", "0"], "argument --epochs: must be an integer ≥ 1, got 0"),
    (["--epochs", "-3"], "argument --epochs: must be an integer ≥ 1, got -3"),
    (["--epochs", "1.5"], "argument --epochs: must be an integer ≥ 1, got '1.5'"),
    (["--batch-size", "0"], "argument --batch-size: must be an integer ≥ 1, got 0"),
    (["--lr", "0"], "argument --lr: must be a number in [1e-12, 1e+12], got 0"),
    (["--lr", "nan"], "argument --lr: must be a number in [1e-12, 1e+12], got nan"),
    (["--lr", "inf"], "argument --lr: must be a number in [1e-12, 1e+12], got inf"),
    (["--lr", "fast"], "argument --lr: must be a number in [1e-12, 1e+12], got 'fast'"),
    (["--momentum", "1"], "argument --momentum: must be a number in [0, 1), got 1"),
    (["--momentum", "-0.5"], "argument --momentum: must be a number in [0, 1), got -0.5"),
    (["--lr-decay", "0"], "argument --lr-decay: must be a number in (0, 1], got 0"),
    (["--seed", "-1"], "argument --seed: must be an integer ≥ 0, got -1"),
    (["--threads", "-2"], "argument --threads: must be an integer ≥ 0, got -2"),
    (["--optimizer", "lbfgs"], "argument --optimizer: invalid choice: 'lbfgs'"),
    (["--bpm-samples", "1"], "argument --bpm-samples: must be an integer ≥ 2, got 1"),
    (["--bpm-rule", "best"], "argument --bpm-rule: invalid choice: 'best'"),
    (["--colour", "red"], "unrecognized arguments: --colour red"),
    (["--device", "foo"], "--device 'foo' is not a device"),
    (["--device", "cuda:7"], "--device cuda:7: this machine has"),
    (["--device", "meta"], "recede trains on cpu or cuda, not meta"),
    (["--model", "vgg"], "unknown model 'vgg'"),
    (["--data", "cifar"], "unknown dataset 'cifar'"),
]
RESMLP = [  # the model and data options of resmlp on trig (train, compare, bench)
    (["--model-opt", "width=-3"], "model 'resmlp' with depth=3, width=-3 cannot be built"),
    (["--model-opt", "width=abc"], "model 'resmlp': option width must be an integer, got 'abc'"),
    (["--model-opt", "width=0"], "has a layer of size 0"),
    (["--model-opt", "width=nan"], "option width must be an integer, got 'nan'"),
    (["--model-opt", "width=1e400"], "option width must be an integer"),
    (["--model-opt", "width"], "--model-opt 'width' is not of the form key=value"),
    (["--model-opt", "widths=[8,"], "the value is not valid YAML"),
    (["--model-opt", "colour=red"], "model 'resmlp' has no option(s) ['colour']"),
    (["--model-opt", "head=both"], "model 'resmlp' with depth=3, head='both': head must be"),
    (["--model-opt", "depth=1"], "depth must be at least 2"),
    (["--model-opt", "in_dim=3"], "model 'resmlp' does not fit dataset 'trig' (inputs (1,), regression)"),
    (["--data-opt", "n=abc"], "dataset 'trig': option n must be an integer, got 'abc'"),
    (["--data-opt", "n=0"], "n must be positive, got 0"),
    (["--data-opt", "n=-5"], "n must be positive, got -5"),
    (["--data-opt", "n_test=0"], "has an empty test split"),
    (["--data-opt", "noise=.inf"], "option noise must be a finite number, got inf"),
    (["--data-opt", "noise=-1"], "noise must be ≥ 0"),
    (["--model", "sequential"], "model 'sequential' has no option(s) ['depth']"),
    (["--model", "resnet62", "--model-opt", "blocks_per_stage=1"], "model 'resnet62' has no option(s) ['depth']"),
    (
        ["--model", "resmlp", "--data", "digits", "--data-opt", "size=abc"],
        "dataset 'digits' has no option(s) ['n', 'n_test']",
    ),
]
RESNET = [  # the model and data options of the demo's resnet62 on digits
    (["--model-opt", "blocks_per_stage=0"], "at least one stage and one block per stage"),
    (["--model-opt", "widths=[8, abc]"], "option widths must be a list of integers"),
    (["--model-opt", "widths=[0]"], "has a layer of size 0"),
    (["--model-opt", "head=both"], "head must be 'independent' or 'group'"),
    (["--data-opt", "size=abc"], "dataset 'digits': option size must be an integer, got 'abc'"),
    (["--data-opt", "size=0"], "size must be"),
    (["--data-opt", "channels=2"], "channels must be 1 or 3, got 2"),
    (["--data-opt", "test_fraction=1.5"], "test_fraction must be in (0, 1)"),
    (["--data-opt", "test_fraction=-0.1"], "test_fraction must be in (0, 1)"),
    (["--model", "resmlp"], "model 'resmlp' has no option(s)"),
    (["--data", "trig"], "dataset 'trig' has no option(s) ['channels', 'size']"),
]
TRAIN = [
    (["--model", "vit-b16", "--model-opt", "depth=2"], "model 'vit-b16' does not fit dataset 'trig'"),
    (
        ["--model", "resnet62", "--model-opt", "blocks_per_stage=1", "--model-opt", "depth=3"],
        "has no option(s) ['depth']",
    ),
    (["--method", "mpc:99"], "horizon must be an integer in [1, 3]"),
    (["--method", "mpc:0"], "horizon must be an integer in [1, 3]"),
    (["--method", "mpc:x"], "'x' is not an integer"),
    (["--method", "loco:9"], "LoCo needs between 2 and T = 3 groups, got 9"),
    (["--method", "ckpt:0"], "checkpoint segments must be an integer in [1, 3]"),
    (["--method", "sgd"], "unknown method 'sgd'"),
    (["--method", "bpm-bp"], "bpm- modifies a local method"),
    (["--method", "ff", "--method", "ff"], "method(s) FF given more than once"),
    (["--checkpoint-every", "-1"], "argument --checkpoint-every: must be an integer ≥ 0, got -1"),
    (["--nproc", "0"], "argument --nproc: must be an integer ≥ 1, got 0"),
    (["--nproc", "two"], "argument --nproc: must be an integer ≥ 1, got 'two'"),
    (["--nproc", "2", "--model-opt", "width=abc"], "option width must be an integer"),
    (["--dist-timeout", "0"], "argument --dist-timeout: must be a number in [0.001, 604800], got 0"),
    (["--dist-timeout", "inf"], "argument --dist-timeout: must be a number in [0.001, 604800], got inf"),
    (["--resume", "always"], "argument --resume: takes no value or 'auto', got 'always'"),
    (["--resume", "--overwrite"], "--resume and --overwrite contradict each other"),
    (["--out", "{good}", "--resume", "--lr", "0.5"], "was written by a different run (lr: 0.01 → 0.5)"),
    (["--out", "{good}", "--resume", "auto", "--model-opt", "depth=4"], "was written by a different run"),
    (["--out", "{new}", "--resume"], "--resume: no checkpoint to resume"),
    (["--out", "{corrupt}", "--resume"], "cannot be read"),
    (["--out", "{foreign}", "--resume"], "is a pickle"),
    (["--out", "{bad-config}", "--resume"], "config.yaml is not valid YAML"),
    (["--pipeline", "0"], "argument --pipeline: must be an integer ≥ 1, got 0"),
    (["--pipeline", "2", "--micro-batches", "0"], "argument --micro-batches: must be an integer ≥ 1, got 0"),
    (["--pipeline", "2", "--nproc", "2"], "--pipeline and --nproc cannot be combined"),
    (["--pipeline", "2", "--method", "loco:2"], "--pipeline trains bp, ff, mpc:H"),
    (["--pipeline", "2", "--model-opt", "width=abc"], "option width must be an integer"),
    (["--pipeline", "2", "--out", "{new}", "--resume"], "--resume: no checkpoint to resume"),
    (["--config", "{files}/method-nested.yaml"], "option method takes a list of values"),
    (["--config", "{files}/resume-text.yaml"], "option resume takes no value or 'auto'"),
]
COMPARE = [
    (["--methods", "mpc:0"], "horizon must be an integer in [1, 3]"),
    (["--methods", "ff", "ff"], "method(s) FF given more than once"),
    (["--methods"], "argument --methods: expected at least one argument"),
    (["--timing-steps", "0"], "argument --timing-steps: must be an integer ≥ 1, got 0"),
    (["--cosine-batches", "-1"], "argument --cosine-batches: must be an integer ≥ 1, got -1"),
]
BENCH = [
    (["--methods", "sgd"], "unknown method 'sgd'"),
    (["--repeats", "0"], "argument --repeats: must be an integer ≥ 1, got 0"),
]
SELECT = [
    (["--eps", "2", "--objective", "constraint"], "argument --eps: must be a number in [0, 1], got 2"),
    (["--eps", "nan"], "argument --eps: must be a number in [0, 1], got nan"),
    (["--weight", "-1"], "argument --weight: must be a number in [0, 1e+12], got -1"),
    (["--weight", "inf"], "argument --weight: must be a number in [0, 1e+12], got inf"),
    (["--c", "0"], "argument --c: must be a number in [1e-12, 1e+12], got 0"),
    (["--M0", "-5"], "argument --M0: must be a number in [1e-12, 1e+30], got -5"),
    (["--batches", "0"], "argument --batches: must be an integer ≥ 1, got 0"),
    (["--batch-size", "-1"], "argument --batch-size: must be an integer ≥ 1, got -1"),
    (["--objective", "best"], "argument --objective: invalid choice: 'best'"),
    (["--objective", "constraint"], "objective 'constraint' (O1) needs eps"),
    (["--horizons", "0,2"], "horizon must be an integer in [1, 3]"),
    (["--horizons", "1,a"], "--horizons must be comma-separated integers"),
    (["--horizons", ","], "--horizons is empty"),
    (["--weights", "{files}/missing.pt"], "--weights: weights file not found"),
    (["--weights", "{files}/garbage.pt"], "cannot be read as a state dict"),
    (["--weights", "{files}/other-model.pt"], "does not fit the model"),
]
REPRODUCE = [
    (["paper-c"], "argument paper: invalid choice: 'paper-c'"),
    (["paper-a", "--data-root", "{files}"], "--data-root is for data read from a folder"),
    (
        ["paper-a", "--full", "--only", "models", "--data-root", "{files}/missing"],
        "cifar10: expected the python-pickle folder",
    ),
    (["paper-a", "--full", "--only", "models", "--data-root", "{files}"], "missing: ["),
    (["paper-a", "--full", "--only", "models", "--data-root", ""], "cifar10: expected the python-pickle folder"),
    (
        ["paper-a", "--full", "--only", "sweeps", "--data-root", "{files}"],
        "starts from pretrained weights: give --weights resnet50=FILE",
    ),
    (["paper-a", "--only", "figs"], "--only takes models, sweeps, rate"),
    (["paper-a", "--preset", "nothing"], "paper-a has no preset 'nothing'"),
    (["paper-a", "--full", "--preset", "cpu"], "give --full or --preset, not both"),
    (["paper-a", "--weights", "{files}/missing.pt"], "no model of this configuration starts from pretrained weights"),
    (["paper-b", "--data-root", "{files}"], "--data-root is for data read from a folder"),
    (["paper-b", "--only", "models"], "--only picks sections of paper-a's configuration"),
    (["paper-b", "--full", "--data-root", "{files}"], "give --weights resnet50=FILE"),
    (
        ["paper-b", "--full", "--weights", "{files}/garbage.pt", "--data-root", "{files}"],
        "cifar100: expected the python-pickle folder",
    ),
    (["paper-a", "--full", "--out", "/proc/recede-out"], "cannot write in /proc"),
    (["paper-a", "--epochs", "3"], "unrecognized arguments: --epochs 3"),
    (["paper-a", "--no-progress=3"], "argument --no-progress: ignored explicit argument '3'"),
    (["paper-b", "--full=yes"], "argument --full: ignored explicit argument 'yes'"),
]
TOP = [
    (["trian"], "argument command: invalid choice: 'trian'"),
    (["--colour", "train"], "unrecognized arguments: --colour"),
]


LM_BASE = [
    "--model",
    "gpt2",
    "--model-opt",
    "n_layer=2",
    "--model-opt",
    "n_embd=8",
    "--model-opt",
    "n_head=2",
    "--data",
    "text",
    "--data-opt",
    "path={files}/corpus",
    "--data-opt",
    "seq_len=16",
    "--batch-size",
    "2",
]
LM_RUN = [*LM_BASE, "--epochs", "1", "--no-progress"]
LM = [  # a GPT-2 on text (train, compare, bench, select); a later --data-opt path= wins
    (["--data-opt", "seq_len=abc"], "option seq_len must be an integer, got 'abc'"),
    (["--data-opt", "seq_len=1"], "seq_len must be >= 2"),
    (["--data-opt", "seq_len=100000"], "seq_len 100000 is longer than the training split"),
    (["--data-opt", "stride=0"], "stride >= 1"),
    (["--data-opt", "tokenizer=wordpiece"], "tokenizer must be one of ('bytes', 'bpe')"),
    (["--data-opt", "vocab_size=512"], "vocab_size=512 needs tokenizer=bpe"),
    (["--data-opt", "tokenizer=bpe", "--data-opt", "vocab_size=100"], "needs vocab_size > 256"),
    (["--data-opt", "val_fraction=1"], "val_fraction must be in (0, 1)"),
    (["--data-opt", "path={files}/missing"], "is neither a file nor a folder"),
    (["--data-opt", "path={files}/no-text"], "has no .txt files"),
    (["--data-opt", "path={files}/binary-text"], "contains NUL bytes"),
    (["--model-opt", "n_layer=0"], "model sizes must be at least 1, got n_layer=0"),
    (["--model-opt", "n_head=3"], "must be divisible by num_heads"),
    (["--model-opt", "preset=huge"], "preset must be one of"),
    (["--model-opt", "attention=flash"], "attention must be one of ('sdpa', 'eager')"),
    (["--model-opt", "head=group"], "have no groups of equal width to share heads within"),
    (["--model-opt", "blocks=9"], "blocks must be an integer in [1, 2]"),
    (["--model-opt", "weights={files}/missing.pt"], "weights file not found"),
    (["--model-opt", "n_positions=8"], "does not fit dataset 'text'"),
]


SELECT_BASE = ["--model-opt", "depth=3", "--data-opt", "n=60", "--data-opt", "n_test=20", "--weight", "0.1"]


def _table() -> list[tuple[list[str], str]]:
    def cases(command: str, base: list[str], *tables: list) -> list:
        return [([command, *base, *argv], message) for table in tables for argv, message in table]

    workload = (OUTPUT, CONFIG, WORKLOAD_CONFIG, OPTIONS)
    return (
        cases("train", TINY, *workload, RESMLP, TRAIN)
        + cases("compare", TINY, *workload, RESMLP, COMPARE)
        + cases("bench", TINY, *workload, RESMLP, BENCH)
        + cases("demo", DEMO, *workload, RESNET)
        + cases("select", SELECT_BASE, OUTPUT, CONFIG, SELECT_CONFIG, RESMLP, SELECT)
        + cases("train", LM_RUN, LM)
        + cases("compare", LM_RUN, LM)
        + cases("bench", LM_RUN, LM)
        + cases("select", [*LM_BASE, "--weight", "0.1"], LM)
        + cases("reproduce", ["paper-a"], OUTPUT, CONFIG, REPRODUCE_CONFIG)
        + cases("reproduce", ["paper-b"], OUTPUT, CONFIG, REPRODUCE_CONFIG)
        + cases("reproduce", [], REPRODUCE)
        + [(argv, message) for argv, message in TOP]
    )


CASES = _table()
if importlib.util.find_spec("tensorboard") is None:
    CASES.append((["train", *TINY, "--tensorboard"], "--tensorboard needs the tensorboard package"))


def _pick(command: str, *tokens: str) -> tuple[list[str], str]:
    return next(c for c in CASES if c[0][0] == command and all(t in c[0] for t in tokens))


# one case of each distinct path also runs as `python -m recede`: argparse, the config file, a
# model option's type, the model/data probe, the results folder, resume, a weights file,
# reproduce's data folder, and the --nproc launcher's own check
SUB_CASES = [
    _pick("train", "--epochs", "0"),
    _pick("train", "--config", "{files}/invalid.yaml"),
    _pick("train", "width=abc"),
    _pick("select", "in_dim=3"),
    _pick("demo", "{good}"),
    _pick("train", "{new}"),
    _pick("select", "{files}/garbage.pt"),
    _pick("reproduce", "paper-b"),
    _pick("train", "--nproc", "2"),
    _pick("train", "tokenizer=wordpiece"),
]


def _id(i: int, argv: list[str]) -> str:
    shared = TINY + DEMO + SELECT_BASE + LM_RUN
    return f"{i + 1:03d}-of-{len(CASES)} " + " ".join(a for a in argv if a not in shared)[:70]


def _snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with its content's hash (folders: "dir")."""
    return {
        str(p.relative_to(root)): f"link to {os.readlink(p)}"
        if p.is_symlink()
        else "dir"
        if p.is_dir()
        else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture(scope="module")
def seeded(tmp_path_factory) -> Path:
    """A good train run, damaged copies of it, and the files the cases name."""
    root = tmp_path_factory.mktemp("fuzz")
    good = root / "good"
    assert (
        main(["train", *TINY, "--method", "bp", "--method", "ff", "--checkpoint-every", "1", "--out", str(good)]) == 0
    )
    for name, damage in [
        ("corrupt", lambda r: (r / "checkpoints" / "bp.pt").write_bytes(b"garbage")),
        ("foreign", lambda r: torch.save({"weights": 1}, r / "checkpoints" / "bp.pt")),
        ("bad-config", lambda r: (r / "config.yaml").write_text("epochs: [1\n")),
    ]:
        shutil.copytree(good, root / name)
        damage(root / name)
    files = root / "files"
    files.mkdir()
    for name, text in [
        ("invalid.yaml", "epochs: [1\n"),
        ("list.yaml", "- epochs\n"),
        ("unknown-key.yaml", "colour: red\n"),
        ("opt-mapping.yaml", "model_opt: {width: 8}\n"),
        ("epochs-text.yaml", "epochs: many\n"),
        ("epochs-list.yaml", "epochs: [1, 2]\n"),
        ("lr-nan.yaml", "lr: .nan\n"),
        ("flag-number.yaml", "no_progress: 3\n"),
        ("method-nested.yaml", "method: [[bp]]\n"),
        ("resume-text.yaml", "resume: always\n"),
        ("batches-text.yaml", "batches: many\n"),
        ("horizons-list.yaml", "horizons: [1, 2]\n"),
        ("eps-nan.yaml", "eps: .nan\n"),
        ("objective-bad.yaml", "objective: best\n"),
        ("full-number.yaml", "full: 3\n"),
        ("paper-bad.yaml", "paper: paper-c\n"),
        ("data-root-list.yaml", "data_root: [a, b]\n"),
        ("plain.txt", "not a folder\n"),
    ]:
        (files / name).write_text(text)
    (files / "binary.yaml").write_bytes(b"\xff\xfe\x00epochs")
    for name, content in [("corpus", b"def f(x):\n    return x + 1\n" * 20), ("binary-text", b"text\x00more")]:
        (files / name).mkdir()
        for i in range(4):
            (files / name / f"doc{i}.txt").write_bytes(content)
    (files / "no-text").mkdir()
    (files / "no-text" / "notes.md").write_text("not a .txt file\n")
    (files / "garbage.pt").write_bytes(b"\x80\x04 not a pickle")
    torch.save({"linear.weight": torch.zeros(2, 2)}, files / "other-model.pt")
    (root / "cwd").mkdir()  # where a default --out would land
    return root


def _argv(case: list[str], root: Path) -> list[str]:
    argv = [
        a.format(
            good=root / "good",
            files=root / "files",
            new=root / "new",
            corrupt=root / "corrupt",
            foreign=root / "foreign",
            **{"bad-config": root / "bad-config"},
        )
        for a in case
    ]
    if "--out" not in argv:
        argv += ["--out", str(root / "good"), "--overwrite"]
    return argv


def _check(code: int | None, err: str, message: str, before: dict, root: Path) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    assert err.endswith("\n") and err.count("\n") == 1, f"not one line:\n{err}"
    assert message in err
    assert _snapshot(root) == before, "a refused run changed the files of the earlier one"


@pytest.mark.parametrize("case, message", CASES, ids=[_id(i, a) for i, (a, _) in enumerate(CASES)])
def test_bad_input_is_one_line_and_leaves_the_earlier_run(case, message, seeded, capfd, monkeypatch):
    before = _snapshot(seeded)
    monkeypatch.chdir(seeded / "cwd")
    threads = torch.get_num_threads()
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:  # pytest would hide them from stderr
        warnings.simplefilter("always")
        try:
            code = main(_argv(case, seeded))
        except SystemExit as exit_:  # argparse
            code = exit_.code
        finally:
            torch.set_num_threads(threads)
    shown = [w for w in caught if not issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning))]
    assert not shown, f"a warning would print more lines: {shown[0].message}"
    _check(code, capfd.readouterr().err, message, before, seeded)


@pytest.mark.parametrize("case, message", SUB_CASES, ids=[_id(CASES.index(c), c[0]) for c in SUB_CASES])
def test_bad_input_in_a_subprocess(case, message, seeded):
    before = _snapshot(seeded)
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "recede", *_argv(case, seeded)],
        cwd=seeded / "cwd",
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    _check(run.returncode, run.stderr, message, before, seeded)


def test_the_table_is_large_and_covers_every_subcommand():
    commands = {c[0] for c, _ in CASES}
    assert {"train", "compare", "demo", "bench", "select", "reproduce"} <= commands
    assert all(sum(c[0] == name for c, _ in CASES) >= 40 for name in commands - {"trian", "--colour"})


# -- by property: generated values at and past every bound ------------------------------------
#
# The table above lists cases; below, hypothesis generates them.  Every ranged option of every
# workload subcommand (read from the parser: int_range/float_range types carry their bounds)
# gets values at and past its bounds, NaN and infinities, text that is not a number, a
# YAML null, nested lists and long or odd unicode strings (on the command line or in a config
# file), and --out gets paths of every kind (a file, under a file, a dangling link, a symlink
# loop, a name over 255 bytes, a non-UTF-8 name, a folder holding config.yaml as a folder).
# The property: exit status 2, one line on stderr, and the earlier run byte for byte.

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from recede.cli import build_parser  # noqa: E402
from recede.cli.options import subcommands  # noqa: E402

BASES = {"train": TINY, "compare": TINY, "bench": TINY, "demo": DEMO, "select": SELECT_BASE}


def _ranged() -> list[tuple[str, str, object]]:
    """(subcommand, option string, its type) for every option with a numeric range."""
    subs = subcommands(build_parser())
    return [
        (name, action.option_strings[-1], action.type)
        for name in BASES
        for action in subs[name]._actions
        if action.option_strings and hasattr(action.type, "low")
    ]


RANGED = _ranged()


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except (ValueError, OverflowError):
        return False


def _outside(kind) -> st.SearchStrategy:
    """Values of an option of type ``kind`` (int_range or float_range) that it must refuse."""
    words = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20).filter(
        lambda t: not _is_number(t) and not t.startswith("-")
    )
    if kind.__name__ == "int":
        ints = st.one_of(
            st.integers(max_value=kind.low - 1, min_value=kind.low - 10**30),
            st.integers(min_value=kind.top + 1, max_value=kind.top + 10**30),
        )
        floats = st.floats().filter(lambda x: not math.isfinite(x) or x != int(x))  # 2.5, nan, inf
        return st.one_of(ints.map(str), floats.map(repr), words)
    below = st.floats(max_value=kind.low, exclude_max=not kind.low_open, allow_nan=False)
    above = (
        st.floats(min_value=kind.high, exclude_min=not kind.high_open, allow_nan=False)
        if kind.high != float("inf")
        else st.just(float("inf"))
    )
    return st.one_of(below.map(repr), above.map(repr), st.just("nan"), st.just("-inf"), words)


def _yaml_value(kind) -> st.SearchStrategy:
    """What a config file may hold instead (YAML text): null (for an option that has a value
    by default), a list, lists nested past the limit, a mapping, a long string."""
    return st.one_of(
        st.just("null"),
        st.lists(st.integers(), min_size=1, max_size=3).map(str),
        st.integers(17, 2000).map(lambda depth: "[" * depth + "]" * depth),
        st.dictionaries(st.sampled_from("abc"), st.integers(), min_size=1).map(str),
        st.integers(4097, 6000).map(lambda n: "x" * n),
    )


@st.composite
def _bad_option(draw) -> tuple[str, list[str], str | None]:
    """(subcommand, extra argv, config file text or None)."""
    command, option, kind = draw(st.sampled_from(RANGED))
    if draw(st.booleans()):
        return command, [f"{option}={draw(_outside(kind))}"], None
    key = option.lstrip("-").replace("-", "_")
    value = draw(_yaml_value(kind))
    if value == "null" and key in (
        "bpm_period",
        "bpm_samples",
        "micro_batches",
        "bpm_a",
        "bpm_lam",
        "M0",
        "eps",
        "lam",
    ):
        value = "not a number"  # null means "not given" for these
    return command, [], f"{key}: {value}\n"


def _odd_folders(root: Path) -> dict[str, Path]:
    base = root / "odd"
    if not base.exists():
        base.mkdir()
        (base / "file").write_text("x")
        (base / "loop").symlink_to(base / "loop")
        (base / "dangling").symlink_to(base / "nowhere")
        (base / "config-dir" / "config.yaml").mkdir(parents=True)
        (base / "checkpoints-file").mkdir()
        (base / "checkpoints-file" / "checkpoints").write_text("x")
    return {
        "file": base / "file",
        "under-file": base / "file" / "sub",
        "loop": base / "loop",
        "under-loop": base / "loop" / "sub",
        "dangling": base / "dangling",
        "under-dangling": base / "dangling" / "sub",
        "config-dir": base / "config-dir",
        "checkpoints-file": base / "checkpoints-file",
        "long": base / ("n" * 256),
        "non-utf8": Path(os.fsdecode(bytes(base) + b"/\xff\xfe")),
        "empty": Path(" "),
    }


def _fuzz(seeded: Path, capfd, command: str, extra: list[str], config: str | None, out: Path | None) -> None:
    before = _snapshot(seeded)
    argv = [command, *BASES[command], *extra]
    if config is not None:
        path = seeded / "cwd" / "fuzz.yaml"
        path.write_text(config)
        argv += ["--config", str(path)]
        before = _snapshot(seeded)
    argv += ["--out", str(seeded / "good"), "--overwrite"] if out is None else ["--out", str(out)]
    threads = torch.get_num_threads()
    capfd.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    finally:
        torch.set_num_threads(threads)
    err = capfd.readouterr().err
    assert code == 2, (argv[-6:], err)
    assert "Traceback" not in err and err.endswith("\n") and err.count("\n") == 1, f"not one line:\n{err}"
    assert _snapshot(seeded) == before, f"{argv[-6:]} changed the files of the earlier run"


FUZZ = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(case=_bad_option())
def test_generated_option_values_are_refused_in_one_line(case, seeded, capfd, monkeypatch):
    monkeypatch.chdir(seeded / "cwd")
    _fuzz(seeded, capfd, *case, None)


@FUZZ
@given(
    command=st.sampled_from(sorted(BASES)),
    kind=st.sampled_from(sorted(_odd_folders(Path("/")).keys())),
    overwrite=st.booleans(),
)
def test_generated_out_folders_are_refused_in_one_line(command, kind, overwrite, seeded, capfd, monkeypatch):
    monkeypatch.chdir(seeded / "cwd")
    out = _odd_folders(seeded)[kind]
    _fuzz(seeded, capfd, command, ["--overwrite"] if overwrite else [], None, out)


@pytest.mark.slow
@settings(FUZZ, max_examples=400, derandomize=False)
@given(case=_bad_option())
def test_generated_option_values_are_refused_in_one_line_at_length(case, seeded, capfd, monkeypatch):
    monkeypatch.chdir(seeded / "cwd")
    _fuzz(seeded, capfd, *case, None)
