"""`recede reproduce paper-a` end to end on a tiny setting, and its configurations checked."""

import copy
import json

import pytest

from recede.reproduce import configs, paper_a

TINY = {
    "seeds": [0, 1],
    "threads": 1,
    "probe_batches": 2,
    "subset_size": 4,
    "objectives": {"eps": 0.1, "weight": {"linear": 0.5, "ladder": 0.125}, "c": 1.0},
    "schedule": {"every": 1, "runs": [{"objective": "weighted", "cost_shape": "linear"}]},
    "models": {
        "M1": {
            "model": "linear-resnet",
            "model_options": {"depth": 6},
            "data": "linear",
            "data_options": {"n": 100, "n_test": 20},
            "lr": 0.03,
            "batch_size": 50,
            "epochs": 2,
            "fig2_epochs": [0, 2],
        },
        "M3": {
            "model": "resnet62",
            "model_options": {"blocks_per_stage": 2, "widths": [4, 4, 8]},
            "data": "digits",
            "data_options": {"size": 8, "channels": 3},
            "train_subset": 32,
            "lr": 0.01,
            "batch_size": 16,
            "epochs": 1,
            "fig2_epochs": [0, 1],
            "train_horizons": [2],
        },
    },
    "sweeps": {
        "R50": {
            "model": "resnet50",
            "model_options": {"layers": [1, 1, 1, 1], "channels": [2, 2, 4, 4]},
            "data": "digits",
            "data_options": {"size": 16, "channels": 3, "test_fraction": 0.9},
            "pretrain": {"samples": 40, "epochs": 1, "optimizer": {"name": "adam", "lr": 0.001}},
            "optimizer": {"name": "adam", "lr": 0.001},
            "batch_size": 32,
            "epochs": 2,
            "snapshot_epochs": [1, 2],
            "horizons": [1, 3],
        },
        "ViT": {
            "model": "vit-b16",
            "model_options": {
                "img_size": 8,
                "patch_size": 4,
                "embed_dim": 8,
                "depth": 3,
                "num_heads": 2,
                "adapter": "lora",
            },
            "data": "digits",
            "data_options": {"size": 8, "channels": 3, "test_fraction": 0.9},
            "pretrain": {"samples": 40, "epochs": 1, "optimizer": {"name": "adam", "lr": 0.001}},
            "optimizer": {"name": "sgd", "lr": 0.01},
            "batch_size": 32,
            "epochs": 1,
            "snapshot_epochs": [1],
        },
    },
    "rate": {
        "steps": [1, 3],
        "workloads": {
            "M1": {
                "model": "linear-resnet",
                "model_options": {"depth": 4},
                "data": "linear",
                "data_options": {"n": 50, "n_test": 5},
                "lr": 0.03,
            }
        },
    },
}

FILES = {
    "models": ["fig2.png", "figE1.png", "figE2.png", "fig5.png"],
    "sweeps": ["fig3.png", "fig4.png"],
    "rate": ["rate.png"],
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("paper_a")
    return out, paper_a.run(out, progress=False, config=copy.deepcopy(TINY))


def test_tiny_reproduction_writes_every_file(tiny_run):
    out, report = tiny_run
    for name in ["results.json", "report.md", *sum(FILES.values(), [])]:
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    selection = results["sections"]["models"]
    assert set(selection["seeds"]) == {"0", "1"}
    seed0 = selection["seeds"]["0"]
    assert set(seed0["models"]) == {"M1", "M3"}
    assert len(seed0["fig5"]) == 8  # 2 models × O1/O2 × linear/ladder
    m1 = seed0["models"]["M1"]
    assert m1["runs"]["h=6"]["r"] == 1.0  # BP against itself
    assert {"LoCo3-eq21", "LoCo5-double"} <= set(m1["runs"])
    assert set(m1["cos_by_epoch"]) == {"0", "2"}
    # the two seeds start from different weights
    assert m1["J0"] != selection["seeds"]["1"]["models"]["M1"]["J0"]
    sweep = results["sections"]["sweeps"]["models"]["R50"]["seeds"]["0"]
    assert sweep["T"] == 4 and set(sweep["runs"]) == {"1", "3", "4"}
    assert len(sweep["runs"]["1"]["test_accuracy"]) == 2
    assert sweep["runs"]["1"]["saved_bytes"] < sweep["runs"]["4"]["saved_bytes"]
    vit = results["sections"]["sweeps"]["models"]["ViT"]
    assert set(vit["seeds"]["0"]["runs"]) == {"1", "2", "3"}
    assert vit["trainable"] < 2000  # LoRA: adapters and heads only
    text = report.read_text()
    for heading in ("Fig. 5", "Fig. 3", "Fig. 4", "Theorem 3.4", "Theorem C.8", "Beyond the paper", " ± "):
        assert heading in text, heading


def test_the_report_is_rendered_again_from_results_json(tiny_run, tmp_path):
    out, report = tiny_run
    summary = json.loads((out / "results.json").read_text())
    again = paper_a.write_report(summary, tmp_path)
    assert again.read_text() == report.read_text()


def test_only_runs_the_chosen_sections(tmp_path):
    tiny = copy.deepcopy(TINY)
    paper_a.run(tmp_path, progress=False, config=tiny, only=["rate"])
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results["sections"]) == ["rate"]
    with pytest.raises(ValueError, match="no sweeps"):
        paper_a.run(tmp_path, progress=False, config={k: v for k, v in tiny.items() if k != "sweeps"}, only=["sweeps"])


@pytest.mark.parametrize("preset", [p for p in configs.presets("paper-a") if not p.startswith("finetune")])
def test_every_preset_is_checked(preset):  # the fine-tuning presets: tests/test_reproduce_init.py
    config = configs.read_config("paper-a", preset)
    paper_a.check_config(config)
    assert [m["model"] for m in config["models"].values()] == ["linear-resnet", "resmlp", "resnet62"]
    assert [e["model"] for e in config["sweeps"].values()] == ["resnet50", "vit-b16"]
    assert len(config["seeds"]) >= 3


def test_the_full_preset_has_papers_settings():
    """Paper A Table D2 (and Fig. 3's caption for which column is which model)."""
    full = paper_a.load_config(True)
    table_d2 = {"M1": (0.03, 100, 40, "linear"), "M2": (0.01, 100, 40, "trig"), "M3": (0.01, 32, 40, "cifar10")}
    for key, (lr, batch, epochs, dataset) in table_d2.items():
        m = full["models"][key]
        assert (m["lr"], m["batch_size"], m["epochs"], m["data"]) == (lr, batch, epochs, dataset)
    assert full["models"]["M3"]["data_options"]["train_size"] == 45000
    assert full["models"]["M3"]["model_options"]["blocks_per_stage"] == 10
    r50, vit = full["sweeps"].values()
    assert (r50["optimizer"], r50["batch_size"], r50["epochs"]) == ({"name": "adam", "lr": 0.001}, 64, 50)
    assert (vit["optimizer"], vit["batch_size"], vit["epochs"]) == ({"name": "sgd", "lr": 0.001}, 32, 20)
    assert vit["model_options"]["adapter"] == "lora" and r50["data"] == vit["data"] == "cifar100"
    assert r50["model_options"]["weights"] == vit["model_options"]["weights"] == configs.REQUIRED


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c: c["models"]["M1"].update(model="vgg"), "unknown model 'vgg'"),
        (lambda c: c["models"]["M1"].update(model_options={"depht": 3}), "no option"),
        (lambda c: c["sweeps"]["R50"].update(data="cifar11"), "unknown dataset"),
        (lambda c: c["sweeps"]["R50"].pop("optimizer"), "missing setting"),
        (lambda c: c["sweeps"]["R50"].update(snapshot_epochs=[9]), "outside"),
        (lambda c: c["rate"]["workloads"]["M1"].update(lr=-1), "lr must be"),
        (lambda c: c.update(seeds=[]), "seeds"),
        (lambda c: c["objectives"].update(weight=0.5), "weight: {linear: W, ladder: W}"),
        (lambda c: c["objectives"].update(eps=-1), "objectives.eps must be a number"),
        (lambda c: c["schedule"]["runs"][0].update(cost_shape="steep"), "schedule.runs must be"),
    ],
)
def test_bad_configurations_are_refused_before_training(mutate, message, tmp_path):
    config = copy.deepcopy(TINY)
    mutate(config)
    with pytest.raises(ValueError, match=message):
        paper_a.run(tmp_path, progress=False, config=config)
    assert not (tmp_path / "results.json").exists()
