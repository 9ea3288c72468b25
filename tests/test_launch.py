"""recede.parallel.launch: `recede train --nproc 2` ends in one line when a rank dies or hangs.

Two end-to-end runs kill (SIGKILL) or stop (SIGSTOP, a hang) rank 1 after the first checkpoint
and time the launcher until it exits; the classification of every other ending is tested on
small stand-in processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SRC

from recede.core.engine import NonFiniteLossError
from recede.parallel.data_parallel import RankFailure
from recede.parallel.launch import REPORT_ENV, _cause, _Rank, report_failure
from recede.runs import checkpoint

RUN = [
    "train",
    "--nproc",
    "2",
    "--model-opt",
    "depth=3",
    "--data-opt",
    "n=40000",
    "--data-opt",
    "n_test=20",
    "--batch-size",
    "10",
    "--epochs",
    "50",
    "--checkpoint-every",
    "5",
    "--no-progress",
]


def _ranks(launcher: int) -> dict[int, int]:
    """The launcher's children by their RANK."""
    ranks = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) != launcher:
                continue
            environ = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        rank = next((e[5:] for e in environ if e.startswith(b"RANK=")), None)
        if rank is not None:
            ranks[int(rank)] = int(stat.parent.name)
    return ranks


def _fail_rank_1(
    out: Path, how: signal.Signals, timeout: float, run: list[str] = RUN
) -> tuple[subprocess.CompletedProcess, float]:
    """Start ``run``, send ``how`` to rank 1 once a checkpoint exists; return the launcher's
    result and the seconds from the signal to its exit."""
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(
        [sys.executable, "-m", "recede", *run, "--dist-timeout", str(timeout), "--out", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not (out / "checkpoints" / "bp.pt").exists() and launcher.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint after 240 s"
        time.sleep(0.02)
    rank = _ranks(launcher.pid).get(1)
    assert rank is not None, launcher.stderr.read() if launcher.poll() is not None else "rank 1 not found"
    os.kill(rank, how)
    sent = time.monotonic()
    try:
        err = launcher.communicate(timeout=timeout + 120)[1]
    finally:
        launcher.kill()
        if how == signal.SIGSTOP:
            try:
                os.kill(rank, signal.SIGKILL)
            except ProcessLookupError:
                pass
    seconds = time.monotonic() - sent
    print(f"{how.name} of rank 1 → launcher exit: {seconds:.1f} s (--dist-timeout {timeout:g})")
    return subprocess.CompletedProcess(launcher.args, launcher.returncode, "", err), seconds


def _one_line(run: subprocess.CompletedProcess) -> str:
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr and run.stderr.count("\n") == 1, run.stderr
    return run.stderr


def test_a_killed_rank_ends_the_job_in_one_line_naming_it_and_how_to_resume(tmp_path):
    out = tmp_path / "run"
    run, seconds = _fail_rank_1(out, signal.SIGKILL, timeout=60)
    line = _one_line(run)
    assert line.startswith(
        "recede train: stopped: rank 1 of 2 died (killed by SIGKILL); "
        f"the last good checkpoint is {out / 'checkpoints' / 'bp.pt'}; "
        "resume with: recede train --nproc 2 "
    )
    assert line.rstrip().endswith(f"--out {out} --resume")
    assert seconds < 60  # a dead peer is noticed at once, not after the 60 s timeout
    assert not checkpoint.read(out / "checkpoints" / "bp.pt")["finished"]


def test_a_hung_rank_ends_the_job_after_the_timeout_in_one_line(tmp_path):
    out = tmp_path / "run"
    run, seconds = _fail_rank_1(out, signal.SIGSTOP, timeout=3)
    line = _one_line(run)
    # rank 0 names the collective it waited in, or torch aborts it first (SIGABRT) on a busy machine
    assert "recede train: stopped: rank 1 of 2 hung: rank 0 waited --dist-timeout 3 s for it " in line
    assert f"the last good checkpoint is {out / 'checkpoints' / 'bp.pt'}; resume with: " in line
    assert 3 <= seconds < 3 + 30  # the timeout, then a short grace; torchrun took 30 s more
    checkpoint.read(out / "checkpoints" / "bp.pt")


@pytest.mark.slow
def test_the_message_s_resume_command_finishes_the_run(tmp_path):
    out = tmp_path / "run"
    small = [a if a != "40000" else "2000" for a in RUN]
    small[small.index("--epochs") + 1] = "2"
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    run, _ = _fail_rank_1(out, signal.SIGKILL, timeout=60, run=small)
    command = _one_line(run).split("resume with: recede ", 1)[1].split()
    resumed = subprocess.run(
        [sys.executable, "-m", "recede", *command], env=env, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr
    assert checkpoint.read(out / "checkpoints" / "bp.pt")["finished"]


def _report(tmp_path: Path, rank: int, kind: str, err: BaseException | None, monkeypatch) -> None:
    """Write rank ``rank``'s failure report as the rank itself would (report_failure)."""
    monkeypatch.setenv(REPORT_ENV, str(tmp_path / f"rank{rank}.json"))
    report_failure(kind, err)
    monkeypatch.delenv(REPORT_ENV)


def _ended(tmp_path: Path, rank: int, code: int, log: str, report=None, monkeypatch=None) -> _Rank:
    """A stand-in rank that wrote ``log`` to its stderr file, its failure ``report`` (kind,
    exception) if any, and exited with ``code``."""
    path = tmp_path / f"rank{rank}.log"
    path.write_text(log)
    if report is not None:
        _report(tmp_path, rank, *report, monkeypatch)
    process = subprocess.Popen([sys.executable, "-c", f"import sys; sys.exit({code})"])
    process.wait()
    return _Rank(rank, process, path)


def _running(tmp_path: Path, rank: int, log: str = "") -> _Rank:
    path = tmp_path / f"rank{rank}.log"
    path.write_text(log)
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    return _Rank(rank, process, path)


GAVE_UP = (
    "stopped",
    RankFailure(
        "rank 0 of 2: the all-reduce of gradients failed: another rank died, hung "
        "past the collective timeout, or ran a different collective (Timed out)",
        operation="the all-reduce of gradients",
    ),
)


@pytest.mark.parametrize(
    "ending, expected, message",
    [
        (
            (2, "", ("error", ValueError("--device cuda:1: this machine has 1 CUDA device(s)"))),
            ValueError,
            "--device cuda:1: this machine has 1 CUDA device(s)",
        ),
        (
            (1, "warning\n", ("stopped", NonFiniteLossError("BP: step 7: non-finite loss"))),
            NonFiniteLossError,
            "BP: step 7: non-finite loss",
        ),
        ((1, "", ("failed", OSError("no space left on device"))), OSError, "no space left on device"),
        ((130, "", ("interrupted", None)), KeyboardInterrupt, ""),
        (
            (1, "Traceback (most recent call last):\n  ...\nRuntimeError: boom\n"),
            RankFailure,
            "rank 1 of 2 failed (exit status 1: RuntimeError: boom; its log: ",
        ),
        ((3, ""), RankFailure, "rank 1 of 2 failed (exit status 3)"),
        (
            (1, "recede train: stopped: BP: step 7: non-finite loss\n"),
            RankFailure,  # a line is not a report
            "rank 1 of 2 failed (exit status 1: recede train: stopped: BP: step 7: non-finite loss",
        ),
    ],
)
def test_each_ending_of_a_rank_is_named(tmp_path, ending, expected, message, monkeypatch):
    ranks = [_ended(tmp_path, 0, 1, "", GAVE_UP, monkeypatch), _ended(tmp_path, 1, *ending, monkeypatch=monkeypatch)]
    failure = _cause(ranks, {r.rank: r.process.returncode for r in ranks}, [], timeout=5)
    assert type(failure) is expected and message in str(failure)


def test_a_rank_still_running_after_another_gave_up_on_it_hung(tmp_path, monkeypatch):
    ranks = [_ended(tmp_path, 0, 1, "", GAVE_UP, monkeypatch), _running(tmp_path, 1)]
    try:
        assert not ranks[1].done() and ranks[0].done() and ranks[0].failed()
        failure = _cause(ranks, {0: 1, 1: None}, [ranks[1]], timeout=5)
    finally:
        ranks[1].process.kill()
        ranks[1].process.wait()
    assert str(failure) == ("rank 1 of 2 hung: rank 0 waited --dist-timeout 5 s for it in the all-reduce of gradients")


def test_a_rank_aborted_while_another_hung_names_the_hung_one(tmp_path):
    path = tmp_path / "rank0.log"
    path.write_text("terminate called after throwing an instance of 'c10::DistBackendError'\n")
    aborted = subprocess.Popen([sys.executable, "-c", "import os; os.abort()"])
    aborted.wait()
    ranks = [_Rank(0, aborted, path), _running(tmp_path, 1)]
    try:
        failure = _cause(ranks, {0: aborted.returncode, 1: None}, [ranks[1]], timeout=5)
    finally:
        ranks[1].process.kill()
        ranks[1].process.wait()
    assert str(failure) == "rank 1 of 2 hung: rank 0 waited --dist-timeout 5 s for it and was aborted (SIGABRT)"


def test_a_rank_that_reported_has_ended_even_while_it_tears_down(tmp_path, monkeypatch):
    rank = _running(tmp_path, 1)
    try:
        assert not rank.done() and not rank.failed()
        _report(tmp_path, 1, "stopped", NonFiniteLossError("BP: step 3: non-finite loss"), monkeypatch)
        assert rank.done() and rank.failed()
    finally:
        rank.process.kill()
        rank.process.wait()
