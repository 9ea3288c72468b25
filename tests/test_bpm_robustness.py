"""recede reproduce bpm-robustness at a toy size: every table, plot and verdict is produced."""

from __future__ import annotations

import json

import pytest

from recede.reproduce import bpm_robustness as study


def tiny_config() -> dict:
    cfg = study.load_config()
    spirals = cfg["tasks"]["spirals"] | {"data_options": {"n": 256, "n_test": 128}, "epochs": 2, "lrs": [0.03]}
    m2 = cfg["tasks"]["m2"] | {
        "data_options": {"n": 200, "n_test": 100},
        "epochs": 2,
        "lrs": [0.01],
        "model_options": {"depth": 4},
    }
    return cfg | {
        "seeds": [0, 1],
        "tasks": {"spirals": spirals, "m2": m2},
        "fresh_regime": {"task": "spirals", "lr": 0.03, "period_epochs": 0.5, "offset_samples": 16},
        "diagnosis": {"task": "spirals", "lr": 0.03, "seed": 0},
    }


def test_tiny_study_writes_tables_plots_and_verdicts(tmp_path, capsys):
    cfg = tiny_config()
    report = study.run(tmp_path, progress=False, config=cfg)
    text = report.read_text()
    assert "## Paper B's regime" in text and "fresher offsets" in text and "Diagnosis" in text
    result = json.loads((tmp_path / "bpm_robustness.json").read_text())
    assert len(result["runs"]) == 2 * (1 + 1) * 4 + 2 * 2  # seeds × (task, lr) × methods + fresh regime
    spirals = result["runs"][study.run_key("spirals", 0.03, 1, "FF+BPM(robust)")]
    assert spirals["offset_samples"] == 16 and spirals["period"] == 4 and len(spirals["refreshes"]) == 2
    rows = [r for r in result["summary"] if r["method"] == "FF+BPM(paper)"]
    assert {r["verdict"] for r in rows} <= {"worse", "not worse"} and all(r["seeds"] == 2 for r in rows)
    m2 = next(r for r in result["summary"] if r["task"] == "m2" and r["method"] == "FF")
    assert not m2["higher_is_better"]
    assert result["diagnosis"]["robust"]["a_min"] == result["diagnosis"]["robust"]["a_max"] == 1
    for rule in ("paper", "robust"):
        assert all(-1 <= result["diagnosis"][rule][k] <= 1 for k in ("cos_in_sample", "cos_held_out", "cos_local"))
    for png in ("results.png", "diagnosis.png"):
        assert (tmp_path / png).stat().st_size > 0
    # started again on the same folder (another plotted run is the same study), it keeps what is
    # there and redoes only a deleted run
    key = study.run_key("m2", 0.01, 1, "FF+BPM(robust)")
    original = result["runs"].pop(key)
    (tmp_path / "bpm_robustness.json").write_text(json.dumps(result))
    study.run(tmp_path, progress=True, config=cfg | {"diagnosis": {"task": "m2", "lr": 0.01, "seed": 0}})
    assert capsys.readouterr().out.count("\n") == 1
    again = json.loads((tmp_path / "bpm_robustness.json").read_text())
    assert again["runs"][key]["curve"] == original["curve"]  # deterministic: the same run again


def test_paired_verdict():
    runs = {study.run_key("t", 0.1, s, "FF"): {"metric": ff} for s, ff in enumerate([50.0, 60.0, 70.0])}
    runs |= {study.run_key("t", 0.1, s, "FF+BPM(x)"): {"metric": m} for s, m in enumerate([52.0, 59.0, 71.0])}
    same = study._paired(runs, "t", 0.1, [0, 1, 2], "FF+BPM(x)", higher=True)
    assert same["vs FF"] == pytest.approx(2 / 3) and same["verdict"] == "not worse"
    runs[study.run_key("t", 0.1, 2, "FF+BPM(x)")] = {"metric": None}  # a diverged run loses
    assert study._paired(runs, "t", 0.1, [0, 1, 2], "FF+BPM(x)", higher=True)["verdict"] == "worse"
    lower = study._paired(runs, "t", 0.1, [0, 1], "FF+BPM(x)", higher=False)  # a loss: lower is better
    assert lower["vs FF"] == pytest.approx(-0.5)


def test_full_and_data_root_are_refused():
    with pytest.raises(ValueError, match="--full"):
        study.load_config(full=True)
    with pytest.raises(ValueError, match="offline"):
        study.run("unused", data_root="somewhere")


def test_refuses_data_folders_and_weights_before_writing(tmp_path):
    for options in ({"data_root": str(tmp_path)}, {"weights": {"resnet50": "w.pt"}}):
        with pytest.raises(ValueError, match="does not apply"):
            study.run(tmp_path / "out", progress=False, on_checked=lambda: pytest.fail("checked"), **options)
    assert not (tmp_path / "out").exists()
