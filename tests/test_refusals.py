"""Nothing in a results folder, a weights file or a data folder runs code; a checkpoint of the
right format but the wrong content, a partial launcher environment, OS errors on --out and
stage checkpoints from different steps are refused in one line, and the earlier run stays
byte for byte."""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SRC, tiny_run

from recede import data
from recede.cli import build_parser, main
from recede.cli.options import parse_with_config
from recede.models.weights import read_state_dict
from recede.parallel.pipeline.run import _identity
from recede.runs import checkpoint
from recede.runs.run import identity
from recede.runs.train import LoopState

TINY = tiny_run()


class Payload:
    """Unpickling this creates the file ``marker`` (``open(marker, "w")``): code that ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): "link"
        if p.is_symlink()
        else "dir"
        if p.is_dir()
        else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


def _one_line(capfd) -> str:
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("refusals")
    assert main(["train", *TINY, "--method", "bp", "--out", str(root / "good")]) == 0
    return root


def _copy(good: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(good / "good", run)
    return run


# -- nothing runs --------------------------------------------------------------------------


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
@pytest.mark.parametrize("resume", [["--resume"], ["--resume", "auto"]])
def test_a_pickled_checkpoint_runs_nothing(good, tmp_path, capfd, writer, resume):
    run = _copy(good, tmp_path)
    marker = tmp_path / "ran"
    payload = {"format": 1, "model": {}, "config": {}, "evil": Payload(marker)}
    with open(run / "checkpoints" / "bp.pt", "wb") as f:
        torch.save(payload, f) if writer == "torch.save" else pickle.dump(payload, f)
    before = _snapshot(tmp_path)
    capfd.readouterr()
    assert main(["train", *TINY, "--method", "bp", "--out", str(run), *resume]) == 2
    err = _one_line(capfd)
    assert "is a pickle" in err and "not opened" in err
    assert not marker.exists(), "unpickling the checkpoint ran code"
    assert _snapshot(tmp_path) == before


def test_a_pickled_checkpoint_is_refused_in_one_named_line(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "bp.pt"
    torch.save({"format": 1, "evil": Payload(marker)}, path)
    with pytest.raises(ValueError, match="bp.pt' is a pickle .* it is not opened"):
        checkpoint.read(path)
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pt", ".bin"])
def test_a_weights_file_that_would_run_code_runs_nothing(tmp_path, capfd, suffix):
    marker = tmp_path / "ran"
    weights = tmp_path / f"evil{suffix}"
    torch.save({"linear.weight": torch.zeros(2, 2), "evil": Payload(marker)}, weights)
    with pytest.raises(ValueError, match="cannot be read as a state dict"):
        read_state_dict(weights)
    capfd.readouterr()
    code = main(["select", *TINY[:6], "--weight", "0.1", "--weights", str(weights), "--out", str(tmp_path / "out")])
    assert code == 2 and "cannot be read as a state dict" in _one_line(capfd)
    assert not marker.exists() and not (tmp_path / "out").exists()


def _cifar10(root: Path, test_batch: object) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    images = np.zeros((2, 3072), dtype=np.uint8)
    for name in [f"data_batch_{i}" for i in range(1, 6)]:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": images, "labels": [1, 2]}, f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(test_batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)


def test_a_cifar_batch_that_would_run_code_runs_nothing(tmp_path, capfd):
    pytest.importorskip("torchvision")
    marker = tmp_path / "ran"
    _cifar10(tmp_path, {"data": np.zeros((2, 3072), dtype=np.uint8), "labels": [0, 1], "x": Payload(marker)})
    with pytest.raises(
        ValueError,
        match=r"test_batch is not in the CIFAR python-pickle format: "
        r"it refers to (io|builtins)\.open, which the CIFAR format never holds",
    ):
        data.load("cifar10", root=str(tmp_path))
    capfd.readouterr()
    code = main(
        [
            "train",
            "--model",
            "resnet62",
            "--data",
            "cifar10",
            "--data-opt",
            f"root={tmp_path}",
            "--epochs",
            "1",
            "--no-progress",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2 and "never holds" in _one_line(capfd)
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_the_cifar_format_still_loads_and_checks_its_arrays(tmp_path):
    pytest.importorskip("torchvision")
    _cifar10(tmp_path, {"data": np.ones((2, 3072), dtype=np.uint8), "labels": [3, 4]})
    task = data.load("cifar10", root=str(tmp_path))
    assert len(task.train) == 10 and len(task.test) == 2 and task.test[1][1] == 4
    shutil.rmtree(tmp_path / "cifar-10-batches-py")
    _cifar10(tmp_path, {"data": np.ones((2, 3072), dtype=np.float64), "labels": [3, 4]})
    with pytest.raises(ValueError, match="N × 3072 uint8"):
        data.load("cifar10", root=str(tmp_path))


# -- the checkpoint format -----------------------------------------------------------------


def test_a_checkpoint_is_safetensors_and_round_trips_every_state(tmp_path):
    from safetensors import safe_open

    net = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.1)
    net(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    path = checkpoint.save(
        tmp_path / "c.pt",
        net=net,
        optimizer=optimizer,
        loop=LoopState(epoch=2, step=3),
        config={"lr": 0.1, "model_opt": ["depth=3"]},
    )
    with safe_open(str(path), framework="pt") as f:  # a plain safetensors file
        assert len(list(f.keys())) >= 4
    payload = checkpoint.read(path)
    assert payload["optimizer"]["state"][0]["exp_avg"].shape == (2, 3)
    assert isinstance(payload["rng"]["python"], tuple) and isinstance(payload["rng"]["numpy"][1], np.ndarray)
    assert payload["config"] == {"lr": 0.1, "model_opt": ["depth=3"]} and payload["loop"]["step"] == 3
    fresh = torch.optim.Adam(torch.nn.Linear(3, 2).parameters(), lr=0.1)
    checkpoint.restore(payload, net=torch.nn.Linear(3, 2), optimizer=fresh)
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])


def _rewrite(path: Path, change) -> None:
    payload = checkpoint.read(path)
    change(payload)
    path.write_bytes(checkpoint.encode(payload))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p: p.pop("model"), "holds no model"),
        (lambda p: p.update(config=None), "holds no config"),
        (lambda p: p.update(loop={"epoch": 1}), "holds no valid loop position"),
        (
            lambda p: p["model"].update({name: torch.zeros(7) for name in list(p["model"])[:1]}),
            "does not fit the model",
        ),
        (lambda p: p["model"].update(extra=torch.zeros(1)), "does not fit the model (unexpected extra)"),
        (lambda p: p.update(format=3), "is not a recede checkpoint"),
    ],
)
def test_a_checkpoint_of_the_wrong_content_is_one_line(good, tmp_path, capfd, change, message):
    run = _copy(good, tmp_path)
    _rewrite(run / "checkpoints" / "bp.pt", change)
    before = _snapshot(tmp_path)
    capfd.readouterr()
    assert main(["train", *TINY, "--method", "bp", "--epochs", "2", "--out", str(run), "--resume"]) == 2
    assert message in _one_line(capfd)
    assert _snapshot(tmp_path) == before


def test_a_checkpoint_header_nested_too_deep_is_one_line(tmp_path):
    from safetensors.torch import save

    path = tmp_path / "deep.pt"
    path.write_bytes(save({"t0": torch.zeros(1)}, metadata={"recede": '{"l": [' * 5000 + "]}" * 5000}))
    with pytest.raises(ValueError, match="cannot be read"):
        checkpoint.read(path)


# -- refusals after the parse leave the earlier run -------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seed", str(2**64)], "argument --seed: must be an integer in [0, 4294967295]"),
        (["--pipeline", "2", "--method", "mpc:9"], "the horizon must be in [1, T = 3]"),
        (["--pipeline", "5"], "--pipeline 5: the model has only T = 3 blocks"),
        (["--pipeline", "2", "--micro-batches", "21"], "--micro-batches 21 is more than the batch of 20"),
        (["--method", "bpm-ff", "--bpm-rule", "fixed", "--bpm-a", "1e300"], "argument --bpm-a: must be a number in"),
        (["--lr", "5e-324"], "argument --lr: must be a number in [1e-12, 1e+12]"),
        (["--device", "cpu:5"], "--device cpu:5: there is one CPU device"),
        (["--out", "{other}"], "--out given 2 times"),
        (["--dist-timeout", "1e20"], "argument --dist-timeout: must be a number in [0.001, 604800]"),
        (["--dist-timeout", "1e-300"], "argument --dist-timeout: must be a number in [0.001, 604800]"),
        (["--model", "a\nb"], "unknown model 'a\\nb'"),
        (["a\nb"], "unrecognized arguments: a\\nb"),
    ],
)
def test_checks_run_before_overwrite_touches_anything(good, tmp_path, capfd, argv, message):
    run = _copy(good, tmp_path)
    before = _snapshot(tmp_path)
    capfd.readouterr()
    argv = [a.format(other=tmp_path / "other") for a in argv]
    try:
        code = main(["train", *TINY, "--out", str(run), "--overwrite", *argv])
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2 and message in _one_line(capfd)
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "command, argv, message",
    [
        ("compare", ["--seeds", "100000000000000000000"], "argument --seeds: must be an integer in [1, 100]"),
        ("compare", ["--timing-steps", "1" + "0" * 20], "argument --timing-steps: must be an integer in [1, 100000]"),
        ("bench", ["--repeats", "1" + "0" * 20], "argument --repeats: must be an integer in [1, 100000]"),
    ],
)
def test_counters_have_bounds(good, tmp_path, capfd, command, argv, message):
    run = _copy(good, tmp_path)
    before = _snapshot(tmp_path)
    capfd.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main([command, *TINY, "--out", str(run), "--overwrite", *argv])
    assert exit_.value.code == 2 and message in _one_line(capfd)
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("key", ["lr", "seed", "epochs", "batch_size", "out"])
def test_a_yaml_null_is_one_line(good, tmp_path, capfd, key):
    run = _copy(good, tmp_path)
    config = tmp_path / "null.yaml"
    config.write_text(f"{key}: null\n")
    before = _snapshot(tmp_path)
    capfd.readouterr()
    assert main(["train", *TINY, "--config", str(config), "--out", str(run), "--overwrite"]) == 2
    assert f"option {key} cannot be null" in _one_line(capfd)
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("where", ["model-opt", "config", "resumed config.yaml"])
def test_deep_nesting_is_one_line(good, tmp_path, capfd, where):
    run = _copy(good, tmp_path)
    deep = "[" * 400 + "]" * 400
    argv = ["train", *TINY, "--out", str(run)]
    if where == "model-opt":
        argv += ["--overwrite", "--model-opt", "widths=" + "[" * 40 + "]" * 40]
    elif where == "config":
        (tmp_path / "deep.yaml").write_text(f"model_opt: {deep}\n")
        argv += ["--overwrite", "--config", str(tmp_path / "deep.yaml")]
    else:
        (run / "config.yaml").write_text(f"model_opt: {deep}\n")
        argv += ["--resume"]
    before = _snapshot(tmp_path)
    capfd.readouterr()
    assert main(argv) == 2
    assert "nested more than 16 levels deep" in _one_line(capfd)
    assert _snapshot(tmp_path) == before


def test_an_invalid_preset_file_is_one_line(tmp_path, capfd):
    preset = tmp_path / "bad.yaml"
    preset.write_text("models: [1\n")
    capfd.readouterr()
    assert main(["reproduce", "paper-a", "--preset", str(preset), "--out", str(tmp_path / "out")]) == 2
    assert "is not valid YAML" in _one_line(capfd)
    assert not (tmp_path / "out").exists()


# -- the environment -------------------------------------------------------------------------


def _recede(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "recede", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", **env},
    )


@pytest.mark.parametrize(
    "env, message",
    [
        ({"RANK": "1"}, "the environment sets RANK but not WORLD_SIZE"),
        ({"WORLD_SIZE": "2"}, "the environment sets WORLD_SIZE but not RANK"),
    ],
)
def test_a_stray_launcher_variable_is_one_line(good, tmp_path, capfd, monkeypatch, env, message):
    run = _copy(good, tmp_path)
    before = _snapshot(tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    capfd.readouterr()
    assert main(["train", *TINY, "--out", str(run)]) == 2
    assert message in _one_line(capfd)
    assert _snapshot(tmp_path) == before


def test_an_invalid_omp_num_threads_is_one_line(good, tmp_path):
    """libgomp reads OMP_NUM_THREADS when torch loads: only a fresh process shows its warning."""
    run = _copy(good, tmp_path)
    before = _snapshot(tmp_path)
    done = _recede("train", *TINY, "--out", str(run), "--overwrite", env={"OMP_NUM_THREADS": "abc"})
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "OMP_NUM_THREADS='abc' is not a positive integer" in done.stderr
    assert _snapshot(tmp_path) == before


def test_rank_values_are_checked(monkeypatch):
    from recede.parallel import data_parallel as distributed

    launcher = {"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "h", "MASTER_PORT": "1"}
    for name, value in launcher.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=r"RANK must be in \[0, WORLD_SIZE\)"):
        distributed.check_env()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ValueError, match="RANK='x' is not a non-negative integer"):
        distributed.check_env()


# -- OS errors on --out -------------------------------------------------------------------------


def test_os_errors_on_out_are_one_line_before_training(tmp_path, capfd):
    root = tmp_path / "root"
    root.mkdir()
    (root / "loop").symlink_to(root / "loop")
    (root / "dangling").symlink_to(root / "nowhere")
    for name, inside, folder in [
        ("config-dir", "config.yaml", True),
        ("metrics-dir", "metrics.json", True),
        ("checkpoints-file", "checkpoints", False),
    ]:
        (root / name).mkdir()
        (root / name / inside).mkdir() if folder else (root / name / inside).write_text("x")
    before = _snapshot(root)
    cases = [
        (root / "loop", "is a symbolic link loop"),
        (root / "loop" / "sub", "is a symbolic link loop"),
        (root / "dangling", "is a dangling symbolic link"),
        (root / "config-dir", "config.yaml is a folder, not a file"),
        (root / "metrics-dir", "metrics.json is a folder, not a file"),
        (root / "checkpoints-file", "checkpoints is a file, not a folder"),
        (root / ("x" * 300), "is longer than 255 bytes"),
        (Path(os.fsdecode(bytes(root) + b"/\xff")), "is not valid UTF-8"),
    ]
    for out, message in cases:
        for extra in ([], ["--overwrite"]):
            capfd.readouterr()
            assert main(["train", *TINY, "--out", str(out), *extra]) == 2, out
            err = _one_line(capfd)
            assert message in err, err
            assert _snapshot(root) == before


def test_a_failed_write_after_training_leaves_no_tmp(tmp_path, capfd, monkeypatch):
    write_text = Path.write_text

    def full_disk(self, text, *args, **kwargs):  # the disk fills up when metrics.json is written
        if self.name.endswith(".tmp"):
            self.touch()  # half a file
            raise OSError(28, "No space left on device", str(self))
        return write_text(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_disk)
    capfd.readouterr()
    assert main(["train", *TINY, "--out", str(tmp_path / "out")]) == 1
    assert "No space left on device" in _one_line(capfd)
    assert not list((tmp_path / "out").glob("*.tmp")) and (tmp_path / "out" / "checkpoints" / "bp.pt").exists()


# -- pipeline stage checkpoints --------------------------------------------------------------

PIPE = ["train", *TINY, "--method", "mpc:2", "--pipeline", "2"]


def _stage_run(folder: Path, steps: tuple[int, int], runs: tuple[str, str] = ("a", "a")) -> None:
    args = parse_with_config(build_parser(), PIPE + ["--out", str(folder)])
    for rank, (step, run) in enumerate(zip(steps, runs)):
        net = torch.nn.Linear(2, 2)
        config = _identity(args, 8) | {"method": "MPC(h=2)", "stages": [2, 1], "run_id": run}
        checkpoint.save(
            folder / "checkpoints" / f"mpc-h-2.stage{rank}.pt",
            net=net,
            optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
            loop=LoopState(global_step=step),
            config=config,
        )
    assert identity(args)["lr"] == 0.01


@pytest.mark.parametrize(
    "steps, runs, message",
    [
        ((6, 3), ("a", "a"), "mpc-h-2.stage0.pt at step 6 of run a, mpc-h-2.stage1.pt at step 3 of run a"),
        ((3, 3), ("a", "b"), "mpc-h-2.stage0.pt at step 3 of run a, mpc-h-2.stage1.pt at step 3 of run b"),
    ],
)
def test_stage_checkpoints_that_disagree_are_refused(tmp_path, capfd, steps, runs, message):
    _stage_run(tmp_path / "run", steps, runs)
    before = _snapshot(tmp_path)
    capfd.readouterr()
    assert main([*PIPE, "--out", str(tmp_path / "run"), "--resume"]) == 2
    err = _one_line(capfd)
    assert "the stage checkpoints disagree" in err and message in err
    assert _snapshot(tmp_path) == before


def test_a_missing_stage_checkpoint_is_refused(tmp_path, capfd):
    _stage_run(tmp_path / "run", (3, 3))
    (tmp_path / "run" / "checkpoints" / "mpc-h-2.stage1.pt").unlink()
    capfd.readouterr()
    assert main([*PIPE, "--out", str(tmp_path / "run"), "--resume"]) == 2
    assert "mpc-h-2.stage1.pt missing" in _one_line(capfd)


def test_a_checkpoint_whose_header_length_looks_like_a_pickle_reads(tmp_path):
    """The header's length is the file's first byte: 0x80 (a pickle's first byte) 1 time in 256."""
    net = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    path = tmp_path / "c.pt"
    for pad in range(300):
        checkpoint.save(path, net=net, optimizer=optimizer, loop=LoopState(), config={"pad": "x" * pad})
        if path.read_bytes()[:1] in (b"\x80", b"P"):
            assert checkpoint.read(path)["config"]["pad"] == "x" * pad
            return
    pytest.fail("no padding gave a header length whose first byte is 0x80")


@pytest.mark.slow
def test_a_killed_stage_ends_in_one_line_with_the_resume_command_which_finishes_the_run(tmp_path):
    """Rank 1 of ``--pipeline 2`` killed after the first stage checkpoints: one line naming
    them and the command to resume; that command resumes (the stages agree on step and run)."""
    import signal
    import time

    from test_launch import _ranks

    out = tmp_path / "run"
    run = [
        "train",
        "--pipeline",
        "2",
        "--model-opt",
        "depth=3",
        "--data-opt",
        "n=3000",
        "--data-opt",
        "n_test=20",
        "--batch-size",
        "10",
        "--epochs",
        "2",
        "--checkpoint-every",
        "5",
        "--no-progress",
        "--dist-timeout",
        "60",
        "--out",
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(
        [sys.executable, "-m", "recede", *run], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    stage = out / "checkpoints" / "bp.stage1.pt"
    deadline = time.monotonic() + 240
    while not stage.exists() and launcher.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(_ranks(launcher.pid)[1], signal.SIGKILL)
    err = launcher.communicate(timeout=180)[1]
    assert launcher.returncode == 1 and err.count("\n") == 1, err
    assert "rank 1 of 2 died (killed by SIGKILL)" in err and f"stage checkpoints are in {out / 'checkpoints'}" in err
    command = err.split("resume with: recede ", 1)[1].split()
    assert command[-1] == "--resume"
    resumed = _recede(*command[1:] if command[0] == "recede" else command, env={})
    assert resumed.returncode in (0, 2), resumed.stderr
    if resumed.returncode == 2:  # killed between the two stages' saves: refused, naming both
        assert "the stage checkpoints disagree" in resumed.stderr and resumed.stderr.count("\n") == 1
    else:
        steps = {checkpoint.read(out / "checkpoints" / f"bp.stage{r}.pt")["loop"]["global_step"] for r in (0, 1)}
        assert steps == {2 * 300}


@pytest.mark.slow
def test_ctrl_c_after_the_results_are_written_still_prints_its_line(tmp_path):
    """An interrupt that lands once ``main`` has returned (the interpreter ending) gets the
    command's line and status 130, not a traceback."""
    script = (
        "import os, signal, sys, time\n"
        "from recede.cli import main\n"
        f"sys.argv = ['recede', 'train', *{TINY!r}, '--out', {str(tmp_path / 'out')!r}]\n"
        "assert main() == 0\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "time.sleep(5)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 130 and done.stderr == "recede train: interrupted\n", done.stderr
    assert (tmp_path / "out" / "metrics.json").exists()
