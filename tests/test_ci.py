"""The checks of .ci/check: .ci/smoke.py finds every script and fails a broken one or one without --smoke."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _smoke_runner():
    spec = importlib.util.spec_from_file_location("ci_smoke", ROOT / ".ci" / "smoke.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SCRIPT = """import argparse
{imports}
parser = argparse.ArgumentParser()
parser.add_argument("--smoke", action="store_true")
print("smoke" if parser.parse_args().smoke else "full")
"""


def test_every_benchmark_and_experiment_script_is_found():
    found = {str(p.relative_to(ROOT)) for p in _smoke_runner().scripts()}
    assert {
        "benchmarks/long_context.py",
        "benchmarks/gpu.py",
        "experiments/bpm_robustness/held_out_ablation.py",
    } <= found
    assert all(name.endswith(".py") and "__pycache__" not in name for name in found)


def test_a_script_that_runs_with_smoke_passes(tmp_path, capsys):
    script = tmp_path / "good.py"
    script.write_text(SCRIPT.format(imports="import json"))
    assert _smoke_runner().main([str(script), "--jobs", "1"]) == 0
    assert "ok" in capsys.readouterr().out


def test_a_broken_import_fails_and_shows_the_error(tmp_path, capsys):
    script = tmp_path / "broken.py"
    script.write_text(SCRIPT.format(imports="from json import no_such_name"))
    assert _smoke_runner().main([str(script), "--jobs", "1"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "ImportError: cannot import name 'no_such_name'" in out


def test_a_script_without_smoke_fails(tmp_path, capsys):
    script = tmp_path / "full_only.py"
    script.write_text("print('a long run')\n")
    assert _smoke_runner().main([str(script)]) == 1
    assert "has no --smoke mode" in capsys.readouterr().out
