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


def _smoke(out: Path, *options: str) -> tuple[dict, list[tuple[str, str, str, str]]]:
    assert _gpu_benchmark().main(["--smoke", "--out", str(out), *options]) == 0
    result = json.loads((out / "gpu.json").read_text())
    assert all(r["ms / step"] > 0 for r in result["rows"])
    assert ("gpt2" in result["skipped"]) != any(r["model"] == "gpt2" for r in result["rows"])  # run, or why not
    assert result["device"] == (torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU")
    return result, [(r["model"], r["dtype"], r["mode"], r["method"]) for r in result["rows"]]


def test_smoke_run_times_every_method(tmp_path):
    _, rows = _smoke(tmp_path, "--dtypes", "bf16", "--modes", "eager")
    assert {r for r in rows if r[0] == "resnet50"} == {("resnet50", "bf16", "eager", m) for m in LABELS}
    assert "| resnet50 | bf16 | eager | FF+BPM |" in (tmp_path / "gpu.md").read_text()


@pytest.mark.slow
def test_smoke_run_in_every_precision_and_mode(tmp_path):
    _, rows = _smoke(tmp_path, "--dtypes", "fp32", "bf16", "--modes", "eager", "compiled")
    assert {r for r in rows if r[0] == "resnet50"} == {
        ("resnet50", d, mode, m) for d in ("fp32", "bf16") for mode in ("eager", "compiled") for m in LABELS
    }


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_the_full_run_asks_for_one(tmp_path, capsys):
    assert _gpu_benchmark().main(["--out", str(tmp_path)]) == 2
    assert "no CUDA GPU here" in capsys.readouterr().err
