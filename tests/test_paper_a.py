"""`recede reproduce paper-a` end to end on a tiny setting: every file is written."""

import json

from recede.reproduce import paper_a

TINY = {
    "seed": 0, "threads": 1, "probe_batches": 2, "subset_size": 4,
    "objectives": {"eps": 0.1, "lam": {"linear": 0.5, "ladder": 0.125}, "c": 1.0},
    "schedule": {"every": 1, "runs": [{"objective": "weighted", "cost": "linear"}]},
    "models": {
        "M1": {"model": "linear-resnet", "model_options": {"depth": 6}, "data": "linear",
               "data_options": {"n": 100, "n_test": 20}, "lr": 0.03, "batch_size": 50, "epochs": 2,
               "fig2_epochs": [0, 2]},
        "M3": {"model": "resnet62", "model_options": {"blocks_per_stage": 2, "widths": [4, 4, 8]},
               "data": "digits", "data_options": {"size": 8, "channels": 3}, "train_subset": 32,
               "lr": 0.01, "batch_size": 16, "epochs": 1, "fig2_epochs": [0, 1],
               "train_horizons": [2]},
    },
}


def test_tiny_reproduction_writes_every_file(tmp_path):
    report = paper_a.run(tmp_path, progress=False, config=TINY)
    for name in ("results.json", "fig2.png", "figE1.png", "figE2.png", "fig5.png", "report.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["models"]) == {"M1", "M3"}
    assert len(results["fig5"]) == 8  # 2 models × O1/O2 × linear/ladder
    m1 = results["models"]["M1"]
    assert m1["runs"]["h=6"]["r"] == 1.0  # BP against itself
    assert set(m1["cos_by_epoch"]) == {"0", "2"}
    text = report.read_text()
    assert "Fig. 5" in text and "Theorem 3.4" in text and "Beyond the paper" in text


def test_cpu_and_full_configs_name_the_three_models():
    for full in (False, True):
        config = paper_a.load_config(full)
        assert [m["model"] for m in config["models"].values()] == ["linear-resnet", "resmlp", "resnet62"]


def test_m3_trains_on_a_users_cifar10_folder(tmp_path):
    from test_data import write_cifar10

    write_cifar10(tmp_path / "cifar", per_batch=8)
    tiny = {**TINY, "models": {"M3": dict(TINY["models"]["M3"], train_subset=16)}}
    paper_a.run(tmp_path / "out", progress=False, config=tiny, data_root=str(tmp_path / "cifar"))
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    m3 = results["config"]["models"]["M3"]
    assert m3["data"] == "cifar10" and m3["data_options"]["root"] == str(tmp_path / "cifar")
