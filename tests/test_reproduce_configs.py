"""The reproductions' presets: every one checked, the papers' settings in the full ones, and a
``--full`` run that starts from a weights file or refuses with one line before any training."""

from __future__ import annotations

import copy
import json
import math

import pytest
import timm
import torch
import yaml
from test_data import _images, _pickle

from recede import data, models
from recede.cli import main
from recede.reproduce import configs, paper_b

TINY_R50 = {"layers": [1, 1, 1, 1], "channels": [2, 2, 4, 4]}
PAPER_B = {
    "optimizer": {"name": "sgd", "lr": 0.001, "momentum": 0.9},
    "batch_size": 64,
    "bpm": {"offset_samples": 320, "micro_batch": 8, "rule": "paper"},
    "methods": ["ff", "loco:4", "mpc:5"],
}


def write_cifar100(root, n: int = 24):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    _pickle(
        folder / "train", {"data": _images(n, 1), "fine_labels": [i % 100 for i in range(n)], "coarse_labels": [0] * n}
    )
    _pickle(folder / "test", {"data": _images(8, 2), "fine_labels": list(range(8)), "coarse_labels": [0] * 8})
    _pickle(folder / "meta", {"fine_label_names": [f"f{i}" for i in range(100)]})


def write_weights(path, num_classes: int = 100, **shape) -> dict:
    """A timm resnet50 state dict of the given shape (timm's key names), as a user would supply."""
    torch.manual_seed(123)
    model = timm.create_model(
        "resnet50", pretrained=False, num_classes=num_classes, **{k: tuple(v) for k, v in (shape or TINY_R50).items()}
    )
    state = model.state_dict()
    torch.save(state, path)
    return state


@pytest.mark.parametrize("preset", configs.presets("paper-b"))
def test_every_paper_b_preset_is_checked(preset):
    paper_b.check_config(configs.read_config("paper-b", preset))


@pytest.mark.parametrize(
    "preset, model, adapter, dataset, epochs, steps_per_epoch, period",
    [
        ("full", "resnet50", None, "cifar100", 30, 782, 782),
        ("full-lokr", "resnet50", "lokr", "cifar100", 30, 782, 782),
        ("full-vit-lora", "vit-b16", "lora", "cifar100", 30, 782, 782),
        ("full-tiny", "resnet50", None, "tiny-imagenet", 10, 1563, 500),
        ("full-tiny-lokr", "resnet50", "lokr", "tiny-imagenet", 10, 1563, 500),
        ("full-tiny-vit-lora", "vit-b16", "lora", "tiny-imagenet", 10, 1563, 500),
    ],
)
def test_paper_b_full_presets_have_papers_settings(preset, model, adapter, dataset, epochs, steps_per_epoch, period):
    """Paper B §6: Table 1's three columns on CIFAR-100 and Table 2's on Tiny-ImageNet (10 epochs, K = 500)."""
    cfg = configs.read_config("paper-b", preset)
    assert (cfg["model"], cfg["model_options"].get("adapter"), cfg["data"], cfg["epochs"]) == (
        model,
        adapter,
        dataset,
        epochs,
    )
    assert {k: cfg[k] for k in PAPER_B} == {
        k: v if k != "bpm" else {**v, "period_epochs": cfg["bpm"]["period_epochs"]} for k, v in PAPER_B.items()
    }
    assert round(cfg["bpm"]["period_epochs"] * steps_per_epoch) == period
    assert cfg["data_options"]["size"] == 224 and cfg["model_options"]["weights"] == configs.REQUIRED
    if adapter:
        assert (cfg["model_options"]["adapter_rank"], cfg["model_options"]["adapter_alpha"]) == (1, 4)
    assert cfg["model_options"]["num_classes"] == (100 if dataset == "cifar100" else 200)


def test_parse_weights():
    assert configs.parse_weights(["a.pt"]) == {None: "a.pt"}
    assert configs.parse_weights(["resnet50=a.pt", "vit-b16=b=c.pt"]) == {"resnet50": "a.pt", "vit-b16": "b=c.pt"}
    assert configs.parse_weights(["x=y.pt"]) == {None: "x=y.pt"}  # not a model name: a file name
    with pytest.raises(ValueError, match="twice"):
        configs.parse_weights(["a.pt", "b.pt"])


def test_weights_go_to_their_models_and_required_ones_must_be_given():
    entries = {
        "a": {"model": "resnet50", "data": "cifar100", "model_options": {"weights": "required"}},
        "b": {"model": "vit-b16", "data": "cifar100", "model_options": {"weights": "required"}},
        "c": {"model": "resmlp", "data": "trig"},
    }
    with pytest.raises(ValueError, match="b starts from pretrained weights: give --weights vit-b16=FILE"):
        configs.apply_sources(copy.deepcopy(entries), None, {"resnet50": "r.pt"}, "x")
    with pytest.raises(ValueError, match="--weights resnet50=FILE --weights vit-b16=FILE"):
        configs.apply_sources(copy.deepcopy(entries), None, {None: "r.pt"}, "x")
    with pytest.raises(ValueError, match="is 'resnet62'"):
        configs.apply_sources(copy.deepcopy(entries), None, {"resnet62": "r.pt"}, "x")
    with pytest.raises(ValueError, match="--data-root is for data read from a folder"):
        configs.apply_sources({"c": dict(entries["c"])}, "/data", {}, "x")
    done = copy.deepcopy(entries)
    configs.apply_sources(done, "/data", {"resnet50": "r.pt", "vit-b16": "v.pt"}, "x")
    assert [done[k]["model_options"]["weights"] for k in "ab"] == ["r.pt", "v.pt"]
    assert done["a"]["data_options"] == {"root": "/data"} and "data_options" not in done["c"]


def test_a_weights_file_in_the_config_is_loaded(tmp_path):
    """Per-model weights in the config: the model built for the run holds the file's tensors."""
    write_cifar100(tmp_path)
    state = write_weights(tmp_path / "r50.pt")
    entry = {
        "model": "resnet50",
        "model_options": {**TINY_R50, "weights": str(tmp_path / "r50.pt")},
        "data": "cifar100",
        "data_options": {"root": str(tmp_path), "size": 16},
    }
    configs.check_sources({"e": entry}, "x")
    net = models.build(entry["model"], data.load(entry["data"], **entry["data_options"]), **entry["model_options"])
    conv1 = net.blocks[0][0].conv1.weight  # the stem rides with block 0 (recede.wrap)
    assert torch.equal(conv1, state["conv1.weight"])


def tiny_full_b(monkeypatch) -> None:
    """paper-b --full with the preset's settings (weights: required, cifar100 from a folder) on a
    ResNet-50 small enough for a test: every shape and count but the model's is the preset's own."""
    real = paper_b.load_config

    def shrunk(full: bool) -> dict:
        cfg = real(full)
        cfg["model_options"] |= TINY_R50
        cfg |= {
            "epochs": 1,
            "batch_size": 8,
            "seeds": [0],
            "methods": ["ff"],
            "device": "cpu",
            "bpm": {"offset_samples": 8, "micro_batch": 4, "period_epochs": 1.0, "rule": "paper"},
            "regimes": [],
            "robust_regimes": [],
        }
        cfg["data_options"] |= {"size": 16}
        return cfg

    monkeypatch.setattr(paper_b, "load_config", shrunk)


def test_full_run_starts_from_a_weights_file(tmp_path, monkeypatch, capsys):
    tiny_full_b(monkeypatch)
    write_cifar100(tmp_path / "data")
    write_weights(tmp_path / "r50.pt")
    out = tmp_path / "out"
    assert (
        main(
            [
                "reproduce",
                "paper-b",
                "--full",
                "--data-root",
                str(tmp_path / "data"),
                "--weights",
                str(tmp_path / "r50.pt"),
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    ), capsys.readouterr().err
    result = json.loads((out / "paper_b.json").read_text())
    assert result["config"]["model_options"]["weights"] == str(tmp_path / "r50.pt")
    assert {"BP", "FF", "FF+BPM"} <= set(result["runs"])
    assert all(math.isfinite(r["accuracy"][-1]) for by_seed in result["runs"].values() for r in by_seed.values())


@pytest.mark.parametrize(
    "case, message",
    [
        ("no weights", "starts from pretrained weights: give --weights resnet50=FILE"),
        ("missing weights file", "weights file not found"),
        ("weights of another shape", "do not fit"),
        ("no data folder", "cifar-100-python"),
    ],
)
def test_full_run_refuses_with_one_line_before_training(case, message, tmp_path, monkeypatch, capsys):
    tiny_full_b(monkeypatch)
    (tmp_path / "data").mkdir()
    if case != "no data folder":
        write_cifar100(tmp_path / "data")
    write_weights(
        tmp_path / "r50.pt",
        **({"layers": [1, 1, 1, 1], "channels": [4, 4, 4, 4]} if case == "weights of another shape" else TINY_R50),
    )
    weights = {"no weights": [], "missing weights file": ["--weights", str(tmp_path / "nothing.pt")]}.get(
        case, ["--weights", f"resnet50={tmp_path / 'r50.pt'}"]
    )
    out = tmp_path / "out"
    assert (
        main(
            [
                "reproduce",
                "paper-b",
                "--full",
                "--data-root",
                str(tmp_path / "data"),
                *weights,
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (out / "paper_b.json").exists()


def test_paper_a_full_refuses_without_its_data_or_weights(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no ./data here
    assert main(["reproduce", "paper-a", "--full", "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert "give --weights resnet50=FILE" in capsys.readouterr().err
    write_weights(tmp_path / "r50.pt")
    torch.save({"x": torch.zeros(1)}, tmp_path / "vit.pt")
    assert (
        main(
            [
                "reproduce",
                "paper-a",
                "--full",
                "--weights",
                f"resnet50={tmp_path / 'r50.pt'}",
                "--weights",
                f"vit-b16={tmp_path / 'vit.pt'}",
                "--out",
                str(tmp_path / "out"),
                "--no-progress",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "cifar-10-batches-py" in err and err.count("\n") == 1, err


def test_paper_a_sweep_from_a_weights_file_by_preset_path(tmp_path, capsys):
    """``--preset FILE.yaml`` with a Figs. 3–4 entry that needs weights: the file is loaded and trained."""
    write_cifar100(tmp_path / "data")
    write_weights(tmp_path / "r50.pt")
    preset = tmp_path / "mine.yaml"
    preset.write_text(
        yaml.safe_dump(
            {
                "seeds": [0],
                "threads": 1,
                "sweeps": {
                    "R50": {
                        "model": "resnet50",
                        "model_options": {**TINY_R50, "weights": "required"},
                        "data": "cifar100",
                        "data_options": {"root": "nowhere", "size": 16},
                        "optimizer": {"name": "adam", "lr": 0.001},
                        "batch_size": 8,
                        "epochs": 1,
                        "snapshot_epochs": [1],
                        "horizons": [1],
                    }
                },
            }
        )
    )
    out = tmp_path / "out"
    assert (
        main(
            [
                "reproduce",
                "paper-a",
                "--preset",
                str(preset),
                "--data-root",
                str(tmp_path / "data"),
                "--weights",
                str(tmp_path / "r50.pt"),
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    ), capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    r50 = results["sections"]["sweeps"]["models"]["R50"]
    assert r50["entry"]["model_options"]["weights"] == str(tmp_path / "r50.pt")
    assert set(r50["seeds"]["0"]["runs"]) == {"1", "4"}


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["reproduce", "paper-a", "--preset", "nope"],
            "paper-a has no preset 'nope'; available: cpu, finetune-cpu, full",
        ),
        (["reproduce", "paper-a", "--full", "--preset", "cpu"], "give --full or --preset"),
        (["reproduce", "paper-b", "--only", "rate"], "--only picks sections of paper-a"),
        (["reproduce", "paper-a", "--only", "fig9"], "--only takes models, sweeps, rate"),
        (["reproduce", "paper-a", "--weights", "sequential=x.pt"], "no model of this configuration is 'sequential'"),
        (["reproduce", "paper-a", "--weights", "resnet50=x.pt"], "either a weights file or a pretrain section"),
    ],
)
def test_bad_reproduce_options_are_one_line(argv, message, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
