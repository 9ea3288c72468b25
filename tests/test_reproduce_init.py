"""``recede reproduce paper-a|paper-b --init``: the sweeps (Figs. 3-4, Algorithm 1) and Paper B's
Table 1 runs start from a checkpoint; a mismatch is one line; and the CPU-scale fine-tuning
presets (issue 23 items 2 and 4)."""

import copy
import json

import pytest
import torch
from safetensors.torch import save_file

from recede import data, models
from recede.cli import main
from recede.reproduce import configs, paper_a, paper_a_sweeps, paper_b
from recede.runs import pretrain

RESNET = {"widths": [2, 3], "blocks_per_stage": 1}
CONFIG = {
    "seeds": [0],
    "threads": 1,
    "probe_batches": 1,
    "subset_size": 2,
    "objectives": {"eps": 0.1, "weight": {"linear": 0.5, "ladder": 0.125}, "c": 1.0},
    "sweeps": {
        "R": {
            "model": "resnet62",
            "model_options": RESNET,
            "data": "digits",
            "data_options": {"classes": [5, 6, 7], "train_size": 24},
            "optimizer": {"name": "adam", "lr": 0.001},
            "batch_size": 12,
            "epochs": 1,
            "snapshot_epochs": [1],
        }
    },
}


def _source(path, seed=7, **options):
    """A resnet62 checkpoint of ``options`` (default :data:`RESNET`) with 3 classes, written to ``path``."""
    torch.manual_seed(seed)
    net = models.build("resnet62", num_classes=3, in_channels=1, **(options or RESNET))
    save_file(pretrain.tensors_to_save(net), str(path))
    return net


def test_init_loads_the_file_into_every_sweep_start_and_skip_keeps_heads_fresh(tmp_path):
    source = _source(tmp_path / "src.safetensors")
    config = copy.deepcopy(CONFIG)
    entries = paper_a_sweeps.entries(config)
    configs.apply_init(
        entries, configs.parse_weights([str(tmp_path / "src.safetensors")], "--init"), ["heads.*"], "paper-a"
    )
    entry = config["sweeps"]["R"]
    assert entry["init"] == str(tmp_path / "src.safetensors") and entry["init_skip"] == ["heads.*"]
    paper_a.check_config(config)
    task = data.load("digits", classes=[5, 6, 7], train_size=24)
    nets = [paper_a_sweeps.start(entry, task, seed, "cpu", False) for seed in (0, 1)]
    for key, value in source.state_dict().items():
        if key.startswith("heads."):
            assert not torch.equal(nets[0].state_dict()[key], nets[1].state_dict()[key]), key  # fresh, seeded
        else:
            assert torch.equal(nets[0].state_dict()[key], value) and torch.equal(nets[1].state_dict()[key], value), key


@pytest.mark.slow  # ~5 s alone, 17 s on the shared CPU: the profiler's first start and 2 × T runs
def test_reproduce_with_init_runs_the_sweeps_and_algorithm_1_from_the_checkpoint(tmp_path):
    _source(tmp_path / "src.safetensors")
    config = copy.deepcopy(CONFIG)
    config["sweeps"]["R"]["select"] = True
    out = tmp_path / "run"
    report = paper_a.run(
        out, progress=False, config=config, init={"resnet62": str(tmp_path / "src.safetensors")}, init_skip=["heads.*"]
    )
    results = json.loads((out / "results.json").read_text())
    model = results["sections"]["sweeps"]["models"]["R"]
    assert model["entry"]["init"] == str(tmp_path / "src.safetensors")
    seed = model["seeds"]["0"]
    T = seed["T"]
    assert set(seed["runs"]) == {str(h) for h in range(1, T + 1)}
    assert set(seed["selection"]["chosen"]) == {"O1-C1", "O1-C2", "O2-C1", "O2-C2"}
    assert all(1 <= c["h"] <= T for c in seed["selection"]["chosen"].values())
    for h in range(1, T + 1):
        run = seed["runs"][str(h)]
        assert run["real_bytes"] > run["saved_bytes"] > 0 and run["J"] > 0
    text = report.read_text()
    assert "init src.safetensors (fresh: heads.*)" in text
    assert "Algorithm 1's horizon against every fixed h" in text and "rank of ĥ" in text


def _yaml(tmp_path, **changes):
    """``CONFIG`` with ``changes`` to its entry, written as a preset file."""
    import yaml

    config = copy.deepcopy(CONFIG)
    config["sweeps"]["R"].update(changes)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("case", ["mismatch", "missing", "skip-typo", "other-paper", "two-models", "bad-preset"])
def test_init_refusals_are_one_line_and_write_nothing(tmp_path, capfd, case):
    _source(tmp_path / "src.safetensors")
    _source(tmp_path / "wide.safetensors", widths=[4, 3], blocks_per_stage=1)
    preset = _yaml(tmp_path)
    out = tmp_path / "out"
    argv = {
        "mismatch": ["paper-a", "--init", str(tmp_path / "wide.safetensors")],
        "missing": ["paper-a", "--init", str(tmp_path / "nothing.safetensors")],
        "skip-typo": ["paper-a", "--init", str(tmp_path / "src.safetensors"), "--init-skip", "head.*"],
        "other-paper": ["bpm-robustness", "--init", str(tmp_path / "src.safetensors")],
        "two-models": ["paper-a", "--init", str(tmp_path / "src.safetensors")],
        "bad-preset": ["paper-a"],
    }[case]
    if case == "two-models":
        config = copy.deepcopy(CONFIG)
        config["sweeps"]["V"] = {**config["sweeps"]["R"], "model": "resmlp", "model_options": {}}
        import yaml

        preset.write_text(yaml.safe_dump(config))
    if case == "bad-preset":
        preset = _yaml(tmp_path, init="pretrained:nope")
    expected = {
        "mismatch": "--init: weights in ",
        "missing": "weights file not found",
        "skip-typo": "--init-skip 'head.*' matches no parameter",
        "other-paper": "--init starts paper-a's and paper-b's runs",
        "two-models": "give --init resmlp=FILE --init resnet62=FILE",
        "bad-preset": "no pretrain preset 'nope'",
    }[case]
    assert main(["reproduce", *argv, "--preset", str(preset), "--out", str(out), "--no-progress"]) == 2
    err = capfd.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert "Traceback" not in err and not out.exists()


def test_init_is_refused_in_sections_that_do_not_read_it():
    config = copy.deepcopy(CONFIG)
    config["rate"] = {
        "steps": [1],
        "workloads": {"M1": {"model": "linear-resnet", "data": "linear", "lr": 0.1, "init": "x.safetensors"}},
    }
    with pytest.raises(ValueError, match="rate.M1: init is read by the sweeps section only"):
        paper_a.check_config(config)


def test_the_finetune_preset_is_checked_and_names_both_sources():
    config = configs.read_config("paper-a", "finetune-cpu")
    paper_a.check_config(config)
    assert config["seeds"] == [0, 1, 2] and set(config) >= {"sweeps"} and "models" not in config
    sweeps = config["sweeps"]
    assert {e["init"] for e in sweeps.values()} == {"pretrained:resnet", "pretrained:vit"}
    assert all(e["select"] and e["init_skip"] == ["heads.*"] for e in sweeps.values())
    assert all(e["data_options"] == pretrain.TARGET for e in sweeps.values())  # classes the source never saw
    vits = [e for e in sweeps.values() if e["model"] == "vit-b16"]
    assert vits and all(
        (e["model_options"]["adapter"], e["model_options"]["adapter_rank"], e["model_options"]["adapter_alpha"])
        == ("lora", 1, 4)
        for e in vits
    )
    assert 0.001 in {e["optimizer"]["lr"] for e in vits}  # Table D2's lr is one of the runs
    for name, entry in sweeps.items():  # the models are the pretrain presets' shapes
        spec = pretrain.PRESETS["resnet" if entry["model"] == "resnet62" else "vit"]
        assert entry["model"] == spec["model"], name


@pytest.mark.slow
def test_the_finetune_preset_runs_at_smoke_scale(tmp_path):
    """The preset's own models and settings, one seed, one epoch on 20 images, each started from a
    fresh model of the preset's shape written as a checkpoint (no pretraining in the test)."""
    config = configs.read_config("paper-a", "finetune-cpu")
    config["seeds"] = [0]
    files = {}
    for entry in config["sweeps"].values():
        entry.update(epochs=1, snapshot_epochs=[1])
        entry["data_options"]["train_size"] = 20
        if entry["model"] not in files:
            options = {k: v for k, v in entry["model_options"].items() if not k.startswith("adapter")}
            task = data.load(entry["data"], **entry["data_options"])
            path = tmp_path / f"{entry['model']}.safetensors"
            save_file(pretrain.tensors_to_save(models.build(entry["model"], task, **options)), str(path))
            files[entry["model"]] = str(path)
    report = paper_a.run(tmp_path / "out", progress=False, config=config, init=files, init_skip=["heads.*"])
    text = report.read_text()
    for name in config["sweeps"]:
        assert f"**{name}**" in text
    assert text.count("rank of ĥ") == len(config["sweeps"])


PAPER_B = {
    "model": "resnet62",
    "model_options": RESNET,
    "data": "digits",
    "data_options": {"classes": [5, 6, 7], "train_size": 24},
    "optimizer": {"name": "sgd", "lr": 0.001, "momentum": 0.9},
    "epochs": 1,
    "batch_size": 12,
    "seeds": [0],
    "threads": 1,
    "methods": ["ff"],
    "bpm": {"period_epochs": 1.0, "offset_samples": 16, "micro_batch": 8, "rule": "paper"},
}


def test_paper_b_init_starts_every_run_from_the_file(tmp_path, monkeypatch):
    import yaml

    _source(tmp_path / "src.safetensors")
    preset = tmp_path / "b.yaml"
    preset.write_text(yaml.safe_dump(PAPER_B))
    loaded = []
    real = pretrain.load_init
    monkeypatch.setattr(
        pretrain,
        "load_init",
        lambda net, file, skip, *state: loaded.append((file, tuple(skip))) or real(net, file, skip, *state),
    )
    from recede.models import weights

    reads = []
    read = weights.read_state_dict
    monkeypatch.setattr(weights, "read_state_dict", lambda path: reads.append(path) or read(path))
    argv = ["reproduce", "paper-b", "--preset", str(preset), "--out", str(tmp_path / "out"), "--no-progress"]
    assert main([*argv, "--init", str(tmp_path / "src.safetensors"), "--init-skip", "heads.*"]) == 0
    runs = json.loads((tmp_path / "out" / "paper_b.json").read_text())["runs"]
    assert len(reads) == 2  # the check, and the study's workload once: not once per run
    assert set(runs) == {"BP", "FF", "FF+BPM", "FF+BPM(λ=0)"}
    # the check, the shared workload's model, and one fresh model per run: all from the file
    assert len(loaded) >= 2 + len(runs) and set(loaded) == {(str(tmp_path / "src.safetensors"), ("heads.*",))}


def test_paper_b_init_mismatch_is_one_line(tmp_path, capfd):
    import yaml

    _source(tmp_path / "wide.safetensors", widths=[4, 3], blocks_per_stage=1)
    preset = tmp_path / "b.yaml"
    preset.write_text(yaml.safe_dump(PAPER_B))
    out = tmp_path / "out"
    argv = ["reproduce", "paper-b", "--preset", str(preset), "--out", str(out), "--no-progress"]
    assert main([*argv, "--init", str(tmp_path / "wide.safetensors")]) == 2
    err = capfd.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--init: weights in " in err and "Traceback" not in err, err
    assert not out.exists()


@pytest.mark.parametrize("column", ["full", "lokr", "lora"])
def test_paper_b_finetune_presets_are_table_1_columns_in_paper_b_s_setting(column):
    config = configs.read_config("paper-b", f"finetune-{column}")
    paper_b.check_config(config)
    source = "vit" if column == "lora" else "resnet"
    assert config["init"] == f"pretrained:{source}" and config["init_skip"] == ["heads.*"]
    assert config["model"] == pretrain.PRESETS[source]["model"]
    assert config["data_options"] == pretrain.TARGET  # classes the source never saw
    assert config["optimizer"] == {"name": "sgd", "lr": 0.001, "momentum": 0.9}
    assert config["bpm"]["period_epochs"] == 1.0 and config["bpm"]["micro_batch"] == 8
    assert config["seeds"] == [0, 1, 2]
    assert config["model_options"].get("adapter") == {"full": None, "lokr": "lokr", "lora": "lora"}[column]
    assert [m.split(":")[0] for m in config["methods"]] == ["ff", "loco", "mpc"]
    assert config["paper_column"] == column  # Table 1 is set beside Paper B's same column


def test_paper_b_sets_table_1_beside_the_configured_column(tmp_path):
    config = copy.deepcopy(PAPER_B) | {"methods": ["ff", "mpc:2"], "paper_column": "lora"}
    report = paper_b.run(tmp_path / "out", progress=False, config=config).read_text()
    table_1 = report.split("## Table 1")[1].split("## Table 3")[0]
    assert "ViT-B/16 with LoRA" in report and "| BP |" in table_1 and "91.49" in table_1
    assert "| MPC(h=2) |" in table_1 and "84.03" in table_1 and "90.29" in table_1  # Paper B's MPC(h=5) row
    assert "(Paper B: 81 %)" in table_1  # (86.30 − 63.65) / (91.49 − 63.65)
    with pytest.raises(ValueError, match="paper_column must be one of full, lokr, lora"):
        paper_b.check_config(PAPER_B | {"paper_column": "vit"})
