"""recede reproduce paper-b at a toy size: every table is produced from every seed and the files
are written."""

from __future__ import annotations

import json

from recede.reproduce import paper_b


def test_epochs_to_reach():
    assert paper_b.epochs_to_reach([10.0, 30.0, 50.0], 30.0) == 2
    assert paper_b.epochs_to_reach([10.0, 20.0], 30.0) is None


def test_mean_sd_and_regime_labels():
    assert paper_b.mean_sd([1.0, 3.0, None]) == {"mean": 2.0, "sd": 2**0.5, "n": 2}
    assert paper_b.mean_sd([5.0])["sd"] is None
    settings = {"period_epochs": 1.0, "offset_samples": 16}
    assert paper_b.regime_label(settings, 45, 32) == "K = 1 epoch (45 steps), B' = 16 (1.1 % of K·B)"
    assert (
        paper_b.regime_name({"period_epochs": 0.3, "offset_samples": 160}, "robust") == "FF+BPM(robust, K=0.3, B'=160)"
    )


def test_run_writes_every_table(tmp_path, monkeypatch):
    cfg = paper_b.load_config(False)
    cfg.update(
        epochs=1,
        seeds=[0, 1],
        model_options={"widths": [2, 4], "blocks_per_stage": 3, "in_channels": 1},
        data_options={"size": 8, "channels": 1, "test_fraction": 0.95},
        bpm={"offset_samples": 16, "micro_batch": 8, "period_epochs": 1.0, "rule": "paper"},
        regimes=[{"period_epochs": 1.0, "offset_samples": 24}],
        robust_regimes=[{"period_epochs": 1.0, "offset_samples": 16}],
    )
    monkeypatch.setattr(paper_b, "load_config", lambda full: cfg)
    report = paper_b.run(tmp_path, full=False, progress=False)
    text = report.read_text()
    for heading in (
        "Table 1",
        "Table 3",
        "Table 4",
        "Table 5",
        "Tables 6–7",
        "Table 8",
        "gap",
        "± ",
        "K = 1 epoch (3 steps), B' = 16",
    ):
        assert heading in text
    result = json.loads((tmp_path / "paper_b.json").read_text())
    assert {
        "BP",
        "FF",
        "FF+BPM",
        "LoCo+BPM",
        "MPC(h=5)+BPM",
        "FF+BPM(λ=0)",
        "FF+BPM(K=1, B'=24)",
        "FF+BPM(robust)",
    } <= set(result["runs"])
    assert set(result["runs"]["FF"]) == {"0", "1"}
    assert result["runs"]["FF+BPM"]["0"]["offset_per_parameter"] <= 1
    # Table 4 is real memory: a step's peak holds at least what it saves for backward
    for name in ("BP", "FF", "FF+BPM"):
        run = result["runs"][name]["0"]
        assert run["step_real_mib"] >= run["step_saved_mib"] > 0
    assert result["runs"]["FF+BPM"]["0"]["refresh_real_mib"] > 0
    assert "step real MiB" in text
    assert result["runs"]["FF+BPM(robust)"]["1"]["settings"]["rule"] == "robust"
    assert result["summary"]["final_accuracy"]["FF"]["n"] == 2
    assert set(result["summary"]["gap_recovered"]["FF+BPM"]["per_seed"]) == {"0", "1"}
    assert (tmp_path / "paper_b.png").stat().st_size > 0
