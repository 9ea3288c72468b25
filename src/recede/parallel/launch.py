"""``recede train --nproc N``: start N ranks on this machine, watch them, end in one line.

:func:`launch` starts ``python -m recede ARGV`` N times with the environment ``torchrun`` gives
its workers (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` =
127.0.0.1, ``MASTER_PORT``; ``OMP_NUM_THREADS=1`` unless set), so
:func:`recede.parallel.data_parallel.init_from_env` joins them into one gloo group.  Rank 0's standard
output goes to the terminal; every rank's standard error goes to a file.  When all ranks exit
with status 0, rank 0's standard error (warnings) is passed on.  A rank that fails in a way it
can explain writes a *report*, a JSON file (:func:`report_failure`: the kind of ending, the
exception's type and message, and for a :class:`RankFailure` the operation it waited in) to
the path in ``RECEDE_RANK_REPORT``, before leaving its process group (which can take another
timeout).  A rank has failed when it exits with a status other than 0, or as soon as it has
written its report or its stderr holds a traceback.  Then the others get
:data:`GRACE_S` to end on their own (a rank waiting on a dead peer fails at once), the rest are
killed, and the root cause is raised as one exception, which the CLI prints as one line:

* a rank killed by a signal → ``RankFailure("rank 1 of 2 died (killed by SIGKILL)")``; one
  that ends without a report (a crash) → ``RankFailure("rank 1 of 2 failed
  (exit status 1: <its last line>; its log: <file>)")``, and that log is kept;
* a rank still running after another gave up waiting for it in a collective (after
  ``--dist-timeout``), or after PyTorch aborted the one waiting for it (SIGABRT, which a
  loaded machine can bring before the waiter's own report) → ``RankFailure("rank 1 of 2 hung:
  ...")``;
* a rank's own report: bad input → ``ValueError``, a non-finite loss →
  :class:`~recede.core.engine.NonFiniteLossError`, a failed write → ``OSError``, an interrupt →
  ``KeyboardInterrupt``.

On Linux the ranks die with the launcher (``PR_SET_PDEATHSIG``), so killing it leaves no rank
behind.  See docs/distributed.md.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recede.core.engine import NonFiniteLossError
from recede.parallel.data_parallel import RankFailure, free_port

GRACE_S = 0.5
"""After a rank fails, how long the others may take to end on their own before they are killed."""
POLL_S = 0.05
REPORT_ENV = "RECEDE_RANK_REPORT"
"""The environment variable that tells a rank where to write its failure report."""
KINDS = ("error", "stopped", "failed", "interrupted")
"""How a rank's run can end badly: bad input, stopped (a non-finite loss, a failed peer), a
failed write, an interrupt (the words of the command line's closing line)."""


def report_failure(kind: str, err: BaseException | None) -> None:
    """Write this rank's failure report when a launcher asked for one (``RECEDE_RANK_REPORT``):
    ``kind`` (one of :data:`KINDS`), ``err``'s type and one-line message, and for a
    :class:`RankFailure` the operation it waited in.  Written whole or not at all (a temporary
    file renamed), so the launcher never reads half of one; without the variable, nothing."""
    path = os.environ.get(REPORT_ENV)
    if not path:
        return
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    report = {
        "kind": kind,
        "type": type(err).__name__ if err is not None else None,
        "message": " ".join(str(err).split()) if err is not None else "",
        "operation": getattr(err, "operation", None),
    }
    temporary = f"{path}.tmp"
    with open(temporary, "w") as f:
        json.dump(report, f)
    os.replace(temporary, path)


@dataclass
class _Rank:
    rank: int
    process: subprocess.Popen
    log: Path

    @property
    def report_path(self) -> Path:
        return self.log.with_suffix(".json")

    def last_line(self) -> str:
        lines = [line.strip() for line in self.log.read_text(errors="replace").splitlines() if line.strip()]
        return lines[-1] if lines else ""

    def said(self) -> dict[str, Any] | None:
        """This rank's failure report (:func:`report_failure`), if it wrote one (it may still be
        tearing down: a process group can take a timeout more to close)."""
        try:
            report = json.loads(self.report_path.read_text())
        except (OSError, ValueError):
            return None
        return report if isinstance(report, dict) and report.get("kind") in KINDS else None

    def failed(self) -> bool:
        code = self.process.poll()
        return code not in (None, 0) or (code is None and (self.said() is not None or self.crashed()))

    def done(self) -> bool:
        """Exited, said its closing line, or crashed (a traceback, maybe still tearing down)."""
        return self.process.poll() is not None or self.said() is not None or self.crashed()

    def crashed(self) -> bool:
        return "Traceback (most recent call last)" in self.log.read_text(errors="replace")


def _die_with_parent() -> None:
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _start(rank: int, nproc: int, port: int, argv: Sequence[str], logs: Path) -> _Rank:
    log = logs / f"rank{rank}.log"
    env = os.environ | {
        "RANK": str(rank),
        "WORLD_SIZE": str(nproc),
        "LOCAL_RANK": str(rank),
        "LOCAL_WORLD_SIZE": str(nproc),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        REPORT_ENV: str(log.with_suffix(".json")),
    }
    env.setdefault("OMP_NUM_THREADS", "1")
    with open(log, "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "recede", *argv],
            env=env,
            stdout=None if rank == 0 else subprocess.DEVNULL,
            stderr=stderr,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
    return _Rank(rank, process, log)


def launch(argv: Sequence[str], nproc: int, timeout: float) -> int:
    """Run ``python -m recede ARGV`` as ``nproc`` data-parallel ranks on this machine and
    return 0 when every rank succeeds; otherwise raise the root cause (module docstring).
    ``timeout`` is the ranks' ``--dist-timeout``, named in the message about a hung rank."""
    if nproc < 1:
        raise ValueError(f"--nproc must be at least 1, got {nproc}")
    logs = Path(tempfile.mkdtemp(prefix="recede-ranks-"))
    ranks: list[_Rank] = []
    keep_logs = False
    try:
        port = free_port()
        ranks = [_start(rank, nproc, port, argv, logs) for rank in range(nproc)]
        while not any(r.failed() for r in ranks):
            if all(r.process.poll() == 0 for r in ranks):
                sys.stderr.write(ranks[0].log.read_text(errors="replace"))
                return 0
            time.sleep(POLL_S)
        deadline = time.monotonic() + GRACE_S
        while not all(r.done() for r in ranks) and time.monotonic() < deadline:
            time.sleep(POLL_S)
        codes = {r.rank: r.process.poll() for r in ranks}  # None: still running
        hung = [r for r in ranks if not r.done()]
        _kill(ranks)
        failure = _cause(ranks, codes, hung, timeout)
        keep_logs = str(logs) in str(failure)  # a crash the CLI did not explain: its log stays
        raise failure
    finally:
        _kill(ranks)
        if not keep_logs:
            shutil.rmtree(logs, ignore_errors=True)


def _kill(ranks: list[_Rank]) -> None:
    for r in ranks:
        if r.process.poll() is None:
            r.process.kill()
    for r in ranks:
        r.process.wait()


def _cause(ranks: list[_Rank], codes: dict[int, int | None], hung: list[_Rank], timeout: float) -> BaseException:
    """The exception that names why the job failed (module docstring), from the ranks' exit
    statuses (``codes``; None: still running), their reports and the ranks that neither
    ended nor reported within the grace (``hung``)."""
    world = len(ranks)
    ended = [r for r in ranks if r not in hung and codes[r.rank] != 0]
    gave_up: list[tuple[_Rank, dict[str, Any]]] = []
    for r in ended:
        said = r.said()
        if said is None:
            continue
        kind, message = said["kind"], str(said.get("message", ""))
        if kind == "interrupted":
            return KeyboardInterrupt()
        if kind == "error":
            return ValueError(message)
        if said.get("type") == "RankFailure" and said.get("operation"):
            gave_up.append((r, said))
        elif kind == "stopped":
            return NonFiniteLossError(message)
        else:
            return OSError(message)
    for r in ended:
        code = codes[r.rank]
        if hung and code == -signal.SIGABRT and r.said() is None:  # torch aborted the waiter
            names = ", ".join(str(h.rank) for h in hung)
            return RankFailure(
                f"rank {names} of {world} hung: rank {r.rank} waited --dist-timeout "
                f"{timeout:g} s for it and was aborted (SIGABRT)"
            )
        if code is not None and code < 0:
            return RankFailure(f"rank {r.rank} of {world} died (killed by {signal.Signals(-code).name})")
        if r.said() is None:
            last = r.last_line()
            detail = f": {last}; its log: {r.log}" if last else ""
            return RankFailure(f"rank {r.rank} of {world} failed (exit status {code}{detail})")
    if hung and gave_up:
        waiter, said = gave_up[0]
        names = ", ".join(str(r.rank) for r in hung)
        return RankFailure(
            f"rank {names} of {world} hung: rank {waiter.rank} waited --dist-timeout "
            f"{timeout:g} s for it in {said['operation']}"
        )
    return RankFailure(gave_up[0][1]["message"] if gave_up else f"rank {ended[0].rank} of {world} failed")
