"""benchmarks/gpu.py runs end to end in its ``--smoke`` setting (tiny models, CPU or GPU)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("timm")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"
LABELS = ("BP", "BP+ckpt", "FF", "MPC(h=2)", "MPC(h=5)", "FF+BPM")


def _gpu_benchmark():
    spec = importlib.util.spec_from_file_location("gpu_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_run_times_every_method_eager_and_compiled(tmp_path):
    assert _gpu_benchmark().main(["--smoke", "--dtypes", "bf16", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "gpu.json").read_text())
    rows = result["rows"]
    assert {(r["mode"], r["method"]) for r in rows if r["model"] == "resnet50"} == {
        (mode, label) for mode in ("eager", "compiled") for label in LABELS}
    assert all(r["dtype"] == "bf16" and r["ms / step"] > 0 for r in rows)
    assert ("gpt2" in result["skipped"]) != any(r["model"] == "gpt2" for r in rows)  # run, or skipped saying why
    assert result["device"] == (torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU")
    assert "| resnet50 | bf16 | compiled | FF+BPM |" in (tmp_path / "gpu.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_the_full_run_asks_for_one(tmp_path, capsys):
    assert _gpu_benchmark().main(["--out", str(tmp_path)]) == 2
    assert "no CUDA GPU here" in capsys.readouterr().err
