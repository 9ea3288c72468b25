"""recede reproduce paper-b at a toy size: every table is produced and the files are written."""

from __future__ import annotations

import json

from recede.reproduce import paper_b


def test_epochs_to_reach():
    assert paper_b.epochs_to_reach([10.0, 30.0, 50.0], 30.0) == 2
    assert paper_b.epochs_to_reach([10.0, 20.0], 30.0) is None


def test_run_writes_every_table(tmp_path, monkeypatch):
    cfg = paper_b.load_config(False)
    cfg.update(epochs=1, model_options={"widths": [2, 4], "blocks_per_stage": 3, "in_channels": 1},
               data_options={"size": 8, "channels": 1, "test_fraction": 0.95},
               bpm={"offset_samples": 16, "micro_batch": 8, "period_epochs": 1.0},
               sensitivity={"offset_samples": [16, 24], "period_epochs": [1.0]}, gap_seeds=[1])
    monkeypatch.setattr(paper_b, "load_config", lambda full: cfg)
    report = paper_b.run(tmp_path, full=False, progress=False)
    text = report.read_text()
    for heading in ("Table 1", "Table 3", "Table 4", "Table 5", "Tables 6–7", "Table 8", "gap"):
        assert heading in text
    result = json.loads((tmp_path / "paper_b.json").read_text())
    assert {"BP", "FF", "FF+BPM", "LoCo+BPM", "MPC(h=5)+BPM", "FF+BPM(λ=0)", "FF+BPM(B'=24)"} <= set(result["runs"])
    assert result["runs"]["FF+BPM"]["offset_per_parameter"] <= 1
    assert (tmp_path / "paper_b.png").stat().st_size > 0
    assert set(result["summary"]["ff_gap_recovered_per_seed"]) == {"0", "1"}
