"""Checkpoints: atomic writes, bitwise resume after a kill, NaN stops with the last good one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import SRC, tiny_run

from recede.cli import main
from recede.runs import checkpoint
from recede.runs.train import LoopState

TINY = [
    "--model",
    "resmlp",
    "--model-opt",
    "depth=4",
    "--data",
    "trig",
    "--data-opt",
    "n=1500",
    "--data-opt",
    "n_test=50",
    "--batch-size",
    "10",
    "--epochs",
    "3",
    "--method",
    "mpc:2",
    "--optimizer",
    "sgd",
    "--momentum",
    "0.9",
    "--lr",
    "0.02",
    "--no-progress",
]


def recede(*argv: str, **kwargs) -> subprocess.Popen | subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "recede", *argv]
    if kwargs.pop("background", False):
        return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def test_resume_after_kill_is_bitwise_identical(tmp_path: Path) -> None:
    whole = recede("train", *TINY, "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr

    out = tmp_path / "killed"
    ckpt = out / "checkpoints" / "mpc-h-2.pt"
    run = recede("train", *TINY, "--out", str(out), "--checkpoint-every", "7", background=True)
    deadline = time.monotonic() + 120
    while not ckpt.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert run.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    stopped = checkpoint.read(ckpt)
    assert not stopped["finished"] and stopped["loop"]["global_step"] % 7 == 0
    assert 0 < stopped["loop"]["global_step"] < 3 * 150

    resumed = recede("train", *TINY, "--out", str(out), "--checkpoint-every", "7", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a = checkpoint.read(tmp_path / "whole" / "checkpoints" / "mpc-h-2.pt")
    b = checkpoint.read(ckpt)
    assert b["finished"] and b["loop"]["global_step"] == a["loop"]["global_step"] == 3 * 150
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for key in ("train_loss", "lr", "test"):
        assert [e[key] for e in a["loop"]["history"]] == [e[key] for e in b["loop"]["history"]]
    momentum_a = [s["momentum_buffer"] for s in a["optimizer"]["state"].values()]
    momentum_b = [s["momentum_buffer"] for s in b["optimizer"]["state"].values()]
    assert all(torch.equal(u, v) for u, v in zip(momentum_a, momentum_b))


@pytest.mark.parametrize("method", ["bp", "mpc:2", "bpm-ff"])
def test_resume_of_a_batchnorm_model_is_bitwise(tmp_path: Path, method: str) -> None:
    """No step runs an extra forward, so BatchNorm statistics (num_batches_tracked included) and
    the parameters after 1 + 1 resumed epochs are those of 2 epochs in one go."""
    args = [
        "train",
        "--model",
        "resnet62",
        "--model-opt",
        "widths=[4, 8]",
        "--model-opt",
        "blocks_per_stage=1",
        "--model-opt",
        "in_channels=1",
        "--data",
        "digits",
        "--data-opt",
        "size=8",
        "--batch-size",
        "64",
        "--method",
        method,
        "--momentum",
        "0.9",
        "--bpm-period",
        "5",
        "--bpm-samples",
        "16",
        "--no-progress",
    ]
    assert main([*args, "--epochs", "2", "--out", str(tmp_path / "whole")]) == 0
    assert main([*args, "--epochs", "1", "--out", str(tmp_path / "split")]) == 0
    assert main([*args, "--epochs", "2", "--out", str(tmp_path / "split"), "--resume"]) == 0
    name = f"{method.replace(':', '-h-')}.pt" if method != "bpm-ff" else "ff-bpm.pt"
    a, b = (checkpoint.read(tmp_path / run / "checkpoints" / name) for run in ("whole", "split"))
    assert int(a["model"]["blocks.0.0.1.num_batches_tracked"]) == 2 * 23
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    assert [e["test"] for e in a["loop"]["history"]] == [e["test"] for e in b["loop"]["history"]]


def test_resume_of_a_different_run_is_refused(tmp_path: Path, capsys) -> None:
    args = [
        "--model-opt",
        "depth=3",
        "--data-opt",
        "n=40",
        "--data-opt",
        "n_test=10",
        "--batch-size",
        "20",
        "--epochs",
        "1",
        "--no-progress",
        "--out",
        str(tmp_path),
    ]
    assert main(["train", *args]) == 0
    assert main(["train", *args, "--lr", "0.5", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "different run" in err and "lr: 0.01 → 0.5" in err


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path: Path, capsys) -> None:
    code = main(
        [
            "train",
            *tiny_run(n=400, n_test=10, batch_size=10),
            *("--lr", "1e9", "--checkpoint-every", "1", "--out"),
            str(tmp_path),
        ]
    )
    assert code == 1
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and "non-finite loss" in message and "last good checkpoint" in message
    step = int(message.split("step ")[1].split(" ")[0])
    kept = checkpoint.read(tmp_path / "checkpoints" / "bp.pt")
    assert kept["loop"]["global_step"] == step - 1
    assert all(torch.isfinite(t).all() for t in kept["model"].values())
    # without periodic checkpoints nothing good was kept, and the message says so
    assert (
        main(
            [
                "train",
                *tiny_run(n=400, n_test=10, batch_size=10),
                *("--lr", "1e9", "--out"),
                str(tmp_path / "none"),
            ]
        )
        == 1
    )
    assert "no checkpoint was written" in capsys.readouterr().err
    assert not (tmp_path / "none" / "checkpoints").exists()


def test_a_write_killed_midway_leaves_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    net = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    path = tmp_path / "run.pt"
    checkpoint.save(path, net=net, optimizer=optimizer, loop=LoopState(epoch=1, step=5))
    before = path.read_bytes()

    def dies_midway(fd):  # the new checkpoint is written but not yet on disk nor renamed
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", dies_midway)
    with torch.no_grad():
        net.weight.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(path, net=net, optimizer=optimizer, loop=LoopState(epoch=2))
    assert path.read_bytes() == before
    assert checkpoint.read(path)["loop"]["step"] == 5
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]


def test_restore_puts_back_rng_optimizer_and_method_state() -> None:
    class Counting:
        def __init__(self) -> None:
            self.count = 0

        def state_dict(self) -> dict:
            return {"count": self.count}

        def load_state_dict(self, state: dict) -> None:
            self.count = state["count"]

    net = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.1)
    net(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    method = Counting()
    method.count = 17
    torch.manual_seed(3)
    payload = {
        "format": checkpoint.FORMAT,
        "model": net.state_dict(),
        "optimizer": optimizer.state_dict(),
        "lr_rule": None,
        "method": method.state_dict(),
        "loop": LoopState(epoch=4).state_dict(),
        "rng": checkpoint.rng_state(),
        "config": {},
        "finished": False,
    }
    expected = torch.rand(3)
    fresh_net, fresh_method = torch.nn.Linear(3, 2), Counting()
    fresh_opt = torch.optim.Adam(fresh_net.parameters(), lr=0.1)
    loop = checkpoint.restore(payload, net=fresh_net, optimizer=fresh_opt, method=fresh_method)
    assert loop.epoch == 4 and fresh_method.count == 17
    assert torch.equal(torch.rand(3), expected)
    assert torch.equal(fresh_opt.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    with pytest.raises(ValueError, match="method state"):
        checkpoint.restore(payload, net=fresh_net, optimizer=fresh_opt, method=object())


def test_unreadable_checkpoint_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt"):
        checkpoint.read(bad)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        checkpoint.read(tmp_path / "missing.pt")


def test_a_safetensors_file_of_another_program_is_named_not_a_checkpoint(tmp_path):
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ValueError, match=r"foreign.safetensors' is not a recede checkpoint \(format"):
        checkpoint.read(tmp_path / "foreign.safetensors")
