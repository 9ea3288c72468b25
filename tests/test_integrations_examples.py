"""Each script in examples/ runs offline on the CPU and prints the memory it saved against BP."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("*.py"))


def test_every_example_is_run_here() -> None:
    assert EXAMPLES == ["accelerate_loop.py", "hf_lora_trainer.py", "lightning_resnet.py"]


@pytest.mark.slow
@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs_and_prints_memory_saved(name: str) -> None:
    for package in ("transformers", "peft", "lightning", "accelerate", "torchvision", "sklearn"):
        pytest.importorskip(package)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)], env=env, capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert run.returncode == 0, run.stderr[-3000:]
    saved = re.search(r"\(([\d.]+) of BP, (\d+)% saved\)", run.stdout)
    assert saved and 0 < float(saved.group(1)) < 1, run.stdout
    assert len((ROOT / "examples" / name).read_text().splitlines()) <= 50  # fits a screen
