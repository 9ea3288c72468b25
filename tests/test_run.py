"""recede.runs.run's BP-modified options (--bpm-rule, --bpm-a, --bpm-lam) for train, compare and demo."""

from __future__ import annotations

import argparse

import pytest

from recede.bpm.estimator import BPModified
from recede.cli import main
from recede.cli.options import add_workload_options
from recede.methods import parse_method
from recede.runs.run import Workload


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(exit_on_error=False)
    add_workload_options(p)
    return p.parse_args(
        ["--model-opt", "depth=3", "--data-opt", "n=60", "--data-opt", "n_test=20", "--batch-size", "20", *argv]
    )


@pytest.mark.parametrize(
    "argv, rule, fixed",
    [
        ((), "robust", (None, None)),
        (("--bpm-rule", "paper"), "paper", (None, None)),
        (("--bpm-rule", "bias"), "bias", (None, None)),
        (("--bpm-rule", "fixed", "--bpm-a", "0", "--bpm-lam", "1"), "fixed", (0.0, 1.0)),
        (("--bpm-rule", "fixed", "--bpm-a", "-0.5", "--bpm-lam", "0.25"), "fixed", (-0.5, 0.25)),
    ],
)
def test_bpm_options_reach_the_method(argv, rule, fixed):
    args = parse(*argv)
    workload = Workload.from_args(args)
    method = workload.method(workload.build(0), parse_method("bpm-ff"), args)
    assert isinstance(method, BPModified) and method.rule == rule and method.fixed == fixed


@pytest.mark.parametrize(
    "argv, message",
    [
        (("--bpm-lam", "1.5"), "--bpm-lam"),
        (("--bpm-a", "nan"), "--bpm-a"),
        (("--bpm-rule", "optimal"), "--bpm-rule"),
    ],
)
def test_bad_bpm_values_name_the_option(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--model-opt", "depth=3", "--method", "bpm-ff", *argv])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_fixed_scaling_without_its_scalars_is_one_clear_line(tmp_path, capsys):
    code = main(
        [
            "train",
            "--model-opt",
            "depth=3",
            "--data-opt",
            "n=60",
            "--data-opt",
            "n_test=20",
            "--method",
            "bpm-ff",
            "--bpm-rule",
            "fixed",
            "--bpm-a",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "--bpm-lam" in err and "Traceback" not in err
