"""The ``recede`` command line end to end: files written, configs, resume and overwrite, and
bad-input messages (tests/test_cli_fuzz.py runs the whole table of bad inputs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import SRC, tiny_run

from recede.cli import main

TINY = tiny_run(epochs=2)


def recede(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "recede", *argv], env=env, capture_output=True, text=True, timeout=300)


def test_train_writes_table_metrics_plot_report_config_and_checkpoints(tmp_path: Path) -> None:
    with_progress = [a for a in TINY if a != "--no-progress"]
    run = recede(
        "train", *with_progress, "--method", "bp", "--method", "ckpt", "--method", "mpc:2", "--out", str(tmp_path)
    )
    assert run.returncode == 0, run.stderr
    assert "steps/s" in run.stdout and "MiB" in run.stdout  # the progress bars
    assert "BP+ckpt" in run.stdout and "MPC(h=2)" in run.stdout
    assert {p.name for p in tmp_path.iterdir()} == {
        "config.yaml",
        "metrics.json",
        "loss.png",
        "report.md",
        "checkpoints",
    }
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [r["method"] for r in metrics["rows"]] == ["BP", "BP+ckpt", "MPC(h=2)"]
    assert len(metrics["history"]["BP"]) == 2
    # the machine it ran on, so that a number can be compared with its own machine's
    assert metrics["machine"]["torch"] == torch.__version__
    assert metrics["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert metrics["machine"]["cpu"] and "gpu" not in metrics["machine"]
    # checkpointed BP computes BP's gradient: the same run to the last digit printed
    assert metrics["rows"][0]["train loss"] == pytest.approx(metrics["rows"][1]["train loss"], rel=1e-6)
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert "| BP |" in (tmp_path / "report.md").read_text()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["bp-ckpt.pt", "bp.pt", "mpc-h-2.pt"]
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["method"] == ["bp", "ckpt", "mpc:2"] and saved["epochs"] == 2


def test_config_file_sets_options_and_flags_win(tmp_path: Path, capsys) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model_opt": ["depth=3"],
                "data-opt": ["n=40", "n_test=10"],
                "batch_size": 20,
                "epochs": 3,
                "lr": 0.05,
                "method": ["ff"],
                "no_progress": True,
                "out": str(tmp_path / "a"),
            }
        )
    )
    assert main(["train", "--config", str(config), "--epochs", "1"]) == 0
    saved = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())
    assert saved["epochs"] == 1 and saved["lr"] == 0.05 and saved["method"] == ["ff"]
    assert len(json.loads((tmp_path / "a" / "metrics.json").read_text())["history"]["FF"]) == 1
    # the saved config repeats the run
    assert main(["train", "--config", str(tmp_path / "a" / "config.yaml"), "--out", str(tmp_path / "b")]) == 0
    first, again = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in "ab")
    assert first["rows"][0]["train loss"] == again["rows"][0]["train loss"]


def test_config_positional_and_null_options(tmp_path: Path) -> None:
    from recede.cli import build_parser
    from recede.cli.options import parse_with_config

    config = tmp_path / "r.yaml"
    config.write_text("paper: paper-a\nfull: true\n")
    args = parse_with_config(build_parser(), ["reproduce", "--config", str(config)])
    assert args.paper == "paper-a" and args.full
    config.write_text("methods: null\nepochs: 2\n")  # as save_resolved writes an unset list
    args = parse_with_config(build_parser(), ["compare", "--config", str(config)])
    assert args.methods is None and args.epochs == 2


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["train", "--model", "vgg"],
            "unknown model 'vgg'; available: gpt2, linear-resnet, llama, resmlp, "
            "resnet50, resnet62, sequential, vit-b16",
        ),
        (["train", "--data", "cifar"], "unknown dataset 'cifar'; available: "),
        (["train", "--method", "mpc:99", *TINY], "horizon must be an integer in [1, 3]"),
        (["train", "--method", "loco:9", *TINY], "LoCo needs between 2 and T = 3 groups, got 9"),
        (["train", "--method", "ckpt:0", *TINY], "checkpoint segments must be an integer in [1, 3]"),
        (["train", "--method", "sgd", *TINY], "unknown method 'sgd'"),
        (["train", "--model-opt", "depth", *TINY], "--model-opt 'depth' is not of the form key=value"),
        (["train", "--model-opt", "colour=red", *TINY], "model 'resmlp' has no option(s) ['colour']"),
        (["train", "--device", "cuda:7", *TINY], "--device cuda:7: this machine has"),
        (["train", "--config", "missing.yaml"], "config file 'missing.yaml' does not exist"),
        (["compare", "--methods", "mpc:0", *TINY], "horizon must be an integer in [1, 3]"),
    ],
)
def test_bad_input_is_one_line_naming_the_problem(argv, message, tmp_path, capsys) -> None:
    assert main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--epochs", "0", "argument --epochs: must be an integer ≥ 1, got 0"),
        ("--batch-size", "x", "argument --batch-size: must be an integer ≥ 1, got 'x'"),
        ("--lr", "-1", "argument --lr: must be a number in [1e-12, 1e+12], got -1"),
        ("--momentum", "1", "argument --momentum: must be a number in [0, 1), got 1"),
        ("--lr-decay", "0", "argument --lr-decay: must be a number in (0, 1], got 0"),
        ("--checkpoint-every", "-2", "argument --checkpoint-every: must be an integer ≥ 0, got -2"),
        ("--optimizer", "lbfgs", "argument --optimizer: invalid choice: 'lbfgs'"),
    ],
)
def test_bad_option_value_names_option_and_range(flag, value, message, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["train", flag, value])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "content, message",
    [
        ("epochs: 0\n", "option epochs must be an integer ≥ 1, got 0"),
        ("lr: fast\n", "option lr must be a number in [1e-12, 1e+12], got 'fast'"),
        ("optimizer: lbfgs\n", "option optimizer must be one of sgd, adam, got 'lbfgs'"),
        ("no_progress: 3\n", "option no_progress must be true or false"),
        ("epochs: [1, 2]\n", "option epochs takes one value"),
        ("epoch: 3\nwidth: 4\n", "unknown option(s) epoch, width; 'recede train' takes: batch_size,"),
        ("- epochs\n", "must be a mapping of option names to values"),
        ("epochs: [1\n", "is not valid YAML"),
    ],
)
def test_bad_config_names_file_option_and_range(content, message, tmp_path, capsys) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(content)
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert message in err and "bad.yaml" in err


def test_tensorboard_without_the_package_says_what_to_install(tmp_path, capsys) -> None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        assert main(["train", *TINY, "--tensorboard", "--out", str(tmp_path)]) == 2
        assert "pip install 'recede[tensorboard]'" in capsys.readouterr().err
    else:
        assert main(["train", *TINY, "--tensorboard", "--out", str(tmp_path)]) == 0
        assert any((tmp_path / "tensorboard" / "bp").iterdir())


def test_errors_are_not_tracebacks_in_a_subprocess(tmp_path: Path) -> None:
    run = recede("train", "--model", "vgg", "--out", str(tmp_path / "run"))
    assert run.returncode == 2
    assert run.stderr.strip() == (
        "recede train: error: unknown model 'vgg'; available: "
        "gpt2, linear-resnet, llama, resmlp, resnet50, resnet62, sequential, vit-b16"
    )


def test_flags_replace_the_config_file_s_lists(tmp_path: Path) -> None:
    from recede.cli import build_parser
    from recede.cli.options import parse_with_config

    config = tmp_path / "run.yaml"
    config.write_text("method: [mpc:4]\nmodel_opt: [depth=3, width=5]\n")
    args = parse_with_config(build_parser(), ["train", "--config", str(config), "--method", "ff"])
    assert args.method == ["ff"] and args.model_opt == ["depth=3", "width=5"]
    args = parse_with_config(build_parser(), ["train", "--config", str(config), "--model-opt", "depth=4"])
    assert args.method == ["mpc:4"] and args.model_opt == ["depth=4"]


def test_resume_needs_a_checkpoint_unless_auto(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", *TINY, "--resume", "--out", str(out)]) == 2
    assert "--resume: no checkpoint to resume" in capsys.readouterr().err
    assert not out.exists()  # a refused run creates nothing
    assert main(["train", *TINY, "--resume", "auto", "--out", str(out)]) == 0  # nothing yet: a fresh run
    assert (out / "checkpoints" / "bp.pt").exists()
    assert main(["train", *TINY, "--resume", "--out", str(out)]) == 0  # the finished run, resumed
    assert main(["train", *TINY, "--resume", "auto", "--out", str(out)]) == 0


def test_a_folder_with_results_is_reused_only_with_overwrite(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", *TINY, "--method", "bp", "--method", "ff", "--out", str(out)]) == 0
    config = (out / "config.yaml").read_bytes()
    assert main(["train", *TINY, "--out", str(out)]) == 2
    assert "holds the results of an earlier run" in capsys.readouterr().err
    assert (out / "config.yaml").read_bytes() == config
    assert main(["train", *TINY, "--epochs", "1", "--overwrite", "--out", str(out)]) == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["bp.pt"]  # ff's is gone
    assert yaml.safe_load((out / "config.yaml").read_text())["method"] is None


def test_usage_is_printed_only_for_a_missing_argument(capsys) -> None:
    for argv in ([], ["reproduce"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("usage: recede") and "the following arguments are required" in err
    with pytest.raises(SystemExit):
        main(["train", "--epochs", "x"])
    assert capsys.readouterr().err == "recede train: error: argument --epochs: must be an integer ≥ 1, got 'x'\n"
