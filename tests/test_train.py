"""The training loop, Paper A's lr rule, the M1/M2 workloads and ``recede train``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recede import data, models
from recede.methods import build_method, parse_method
from recede.runs.train import LossIncreaseDecay, batches, make_optimizer, train

ROOT = Path(__file__).resolve().parents[1]


def test_lr_decays_only_when_the_epoch_loss_rises():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    rule = LossIncreaseDecay(opt, 0.9)
    for loss in (5.0, 4.0, 4.5, 4.4, 4.6):
        rule.step(loss)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.81)
    restored = LossIncreaseDecay(opt)
    restored.load_state_dict(rule.state_dict())
    assert restored.previous == 4.6


def test_synthetic_sets_follow_paper_a_appendix_d():
    m1 = data.load("linear", n=500, dim=10, n_test=50)
    x, y = m1.train.tensors
    assert x.shape == (500, 10) and y.shape == (500, 10)
    w0 = torch.linalg.lstsq(x, y).solution.T
    assert torch.allclose(x @ w0.T, y, atol=1e-4)  # y = W0 x exactly
    m2 = data.load("trig", n=2000, n_test=10)
    x, y = m2.train.tensors
    assert x.min() >= -2 and x.max() <= 2 and y.shape == (2000, 4)
    ratio = y[:, 0] / torch.cos(torch.pi * x[:, 0])
    assert (ratio - 1).std() == pytest.approx(0.03, rel=0.15)  # (1 + ε), ε ~ N(0, 0.03²)


def test_registries_name_what_exists():
    with pytest.raises(ValueError, match="unknown model 'nope'; available: .*resmlp"):
        models.build("nope")
    with pytest.raises(ValueError, match="unknown dataset 'nope'; available: .*trig"):
        data.load("nope")
    with pytest.raises(ValueError, match="has no option"):
        models.build("resmlp", widht=3)
    with pytest.raises(ValueError, match=r"dataset 'digits' has no option\(s\) \['n'\]"):
        data.load("digits", n=3)
    with pytest.raises(ValueError, match="n must be positive, got 0"):
        data.load("linear", n=0)
    empty = torch.utils.data.TensorDataset(torch.zeros(0, 1))
    with pytest.raises(ValueError, match="dataset 'mine' has an empty training split"):
        data.Task("mine", empty, empty, "regression", (1,), 1)


def test_model_sizes_follow_the_task():
    task = data.load("digits", size=8, channels=1)
    net = models.build("resnet62", task, widths=(4,), blocks_per_stage=1)
    assert net(task.train[0:2][0].float()).shape == (2, 10)
    assert models.build("linear-resnet").T == 15 and models.build("resmlp").T == 15


@pytest.mark.parametrize("method", ["bp", "ff", "mpc:3", "loco:3", "loco-double:5"])
def test_training_reduces_the_loss_and_is_reproducible(method):
    task = data.load("trig", n=600, n_test=100)

    def run():
        torch.manual_seed(0)
        net = models.build("resmlp", task)
        opt = make_optimizer(net.parameters(), "sgd", 0.05, momentum=0.9)
        history = train(
            net,
            build_method(net, method),
            task.train,
            opt,
            epochs=3,
            batch_size=50,
            test_set=task.test,
            lr_rule=LossIncreaseDecay(opt),
            progress=False,
        )
        return history, torch.cat([p.detach().flatten() for p in net.parameters()])

    (h1, p1), (_, p2) = run(), run()
    assert h1[-1].train_loss < h1[0].train_loss
    assert torch.equal(p1, p2)
    assert set(h1[-1].test) == {"loss"}


def test_method_names():
    assert parse_method("mpc:4").label == "MPC(h=4)"
    assert parse_method("loco-double:3").double
    for bad in ("mpc", "mpc:x", "sgd", "bp:2"):
        with pytest.raises(ValueError):
            parse_method(bad)
    net = models.build("resmlp", depth=4)
    with pytest.raises(ValueError, match=r"horizon must be an integer in \[1, 4\]"):
        build_method(net, "mpc:9")
    with pytest.raises(ValueError, match="LoCo needs between 2 and T = 4 groups"):
        build_method(net, "loco:9")


def test_empty_data_is_refused():
    empty = torch.utils.data.TensorDataset(torch.zeros(0, 3), torch.zeros(0, 3))
    with pytest.raises(ValueError, match="empty dataset"):
        batches(empty, 4)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "recede", *args], capture_output=True, text=True, env=env, timeout=300)


def test_recede_train_prints_and_writes_the_table(tmp_path):
    out = tmp_path / "run"
    result = run_cli(
        "train",
        "--model",
        "resmlp",
        "--data",
        "trig",
        "--data-opt",
        "n=400",
        "--data-opt",
        "n_test=50",
        "--method",
        "bp",
        "--method",
        "mpc:2",
        "--epochs",
        "2",
        "--no-progress",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    metrics = json.loads((out / "metrics.json").read_text())
    assert [row["method"] for row in metrics["rows"]] == ["BP", "MPC(h=2)"]
    assert metrics["rows"][1]["saved MiB"] < metrics["rows"][0]["saved MiB"]
    for row in metrics["rows"]:  # the terminal shows each method with its real peak, uncut
        line = next(line for line in result.stdout.splitlines() if f" {row['method']} " in line)
        assert f"{row['real MiB']:.4g}" in line and "…" not in line
    report = (out / "report.md").read_text()
    assert "| MPC(h=2) |" in report
    for column in ("train loss", "ms/step", "real MiB", "saved MiB"):
        assert f" {column} |" in next(line for line in report.splitlines() if line.startswith("| method"))


def test_recede_train_reports_bad_input_without_a_traceback(tmp_path):
    result = run_cli(
        "train",
        "--model",
        "resmlp",
        "--method",
        "mpc:99",
        "--data-opt",
        "n=100",
        "--no-progress",
        "--out",
        str(tmp_path),
    )
    assert result.returncode == 2
    assert "horizon must be an integer in [1, 15]" in result.stderr
    assert "Traceback" not in result.stderr


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text().splitlines()
    test_line = next(line.strip() for line in readme[:8] if "bash .ci/check" in line)
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_line in [line.strip() for line in ci]
    assert "python -m pytest -n 2" in (ROOT / ".ci" / "check").read_text()  # the checks end with the suite
