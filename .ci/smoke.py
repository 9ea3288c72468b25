"""Run every benchmark and experiment script with ``--smoke``; fail if one fails or has no ``--smoke``.

Scripts are found by glob (``benchmarks/**/*.py``, ``experiments/**/*.py``), so a new one is
picked up without editing this file.  Each runs as ``python SCRIPT --smoke`` in a fresh
temporary working directory (so a smoke run cannot write into the tree), with this tree's
``src`` first on ``PYTHONPATH`` and one torch thread, ``--jobs`` at a time.  Prints one line per
script (its wall seconds), and for a failure the end of its output.

    python .ci/smoke.py [--jobs 2] [--timeout 300] [SCRIPT ...]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PATTERNS = ("benchmarks/**/*.py", "experiments/**/*.py")
TAIL = 40  # lines of a failed script's output to show


def scripts() -> list[Path]:
    """Every script under benchmarks/ and experiments/, sorted."""
    return sorted({p for pattern in PATTERNS for p in ROOT.glob(pattern) if "__pycache__" not in p.parts})


def name(script: Path) -> str:
    """``script`` relative to the tree (as given, if it lies outside)."""
    return str(script.relative_to(ROOT)) if script.is_relative_to(ROOT) else str(script)


def run(script: Path, timeout: float) -> tuple[Path, float, int, str]:
    """``python SCRIPT --smoke`` in a temporary folder: (script, seconds, exit status, output)."""
    env = os.environ | {
        "OMP_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
    }
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="smoke-") as cwd:
        try:
            done = subprocess.run(
                [sys.executable, str(script), "--smoke"],
                cwd=cwd,
                env=env,
                timeout=timeout,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            status, output = done.returncode, done.stdout
        except subprocess.TimeoutExpired as err:
            out = err.stdout or ""
            status, output = 124, (out if isinstance(out, str) else out.decode()) + f"\ntimed out after {timeout:g} s"
    return script, time.perf_counter() - start, status, output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scripts", nargs="*", type=Path, help="default: every script the globs find")
    parser.add_argument("--jobs", type=int, default=2, help="scripts run at once")
    parser.add_argument("--timeout", type=float, default=300, help="seconds one script may take")
    args = parser.parse_args(argv)
    found = [p.resolve() for p in args.scripts] or scripts()
    missing = [p for p in found if "--smoke" not in p.read_text()]
    for p in missing:
        print(f"FAIL  {name(p)} has no --smoke mode (every benchmark and experiment needs one)")
    failed = len(missing)
    start = time.perf_counter()
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        for script, seconds, status, output in pool.map(
            lambda p: run(p, args.timeout), [p for p in found if p not in missing]
        ):
            if status == 0:
                print(f"ok    {seconds:6.1f} s  {name(script)} --smoke", flush=True)
                continue
            failed += 1
            tail = "\n".join("    " + line for line in output.rstrip().splitlines()[-TAIL:])
            print(f"FAIL  {seconds:6.1f} s  {name(script)} --smoke exited with {status}:\n{tail}", flush=True)
    print(
        f"{len(found) - failed} of {len(found)} smoke runs passed in {time.perf_counter() - start:.0f} s "
        f"({args.jobs} at a time)"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
