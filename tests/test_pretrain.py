"""``recede pretrain`` (deterministic, cached by a content hash) and ``--init`` (loads into every
registry model; a mismatch, a pickle or a typo is one line and writes nothing)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from test_models import TINY

from recede import models
from recede.cli import build_parser, main
from recede.cli.options import parse_with_config
from recede.runs import pretrain
from recede.runs.run import Workload

TINY_SOURCE = [
    "--model",
    "resnet62",
    "--model-opt",
    "widths=[2, 3]",
    "--model-opt",
    "blocks_per_stage=1",
    "--data",
    "digits",
    "--data-opt",
    "classes=[0, 1, 2]",
    "--data-opt",
    "train_size=40",
    "--epochs",
    "1",
    "--batch-size",
    "16",
    "--no-progress",
    "--threads",
    "1",
]
TARGET = [
    "--model",
    "resnet62",
    "--model-opt",
    "widths=[2, 3]",
    "--model-opt",
    "blocks_per_stage=1",
    "--data",
    "digits",
    "--data-opt",
    "classes=[7, 8]",
    "--data-opt",
    "train_size=20",
    "--epochs",
    "1",
    "--batch-size",
    "10",
    "--no-progress",
]


class Payload:
    """Unpickling this creates the file ``marker``: code that ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _one_line(capfd) -> str:
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def _pretrain(out: Path, capsys) -> tuple[Path, str]:
    assert main(["pretrain", *TINY_SOURCE, "--out", str(out)]) == 0
    files = sorted(out.glob("*.safetensors"))
    assert len(files) == 1
    return files[0], capsys.readouterr().out


def test_pretraining_is_deterministic_and_cached(tmp_path, capsys, monkeypatch):
    first, said = _pretrain(tmp_path / "a", capsys)
    assert said.startswith("wrote ")
    second, _ = _pretrain(tmp_path / "b", capsys)
    assert first.name == second.name and first.read_bytes() == second.read_bytes()
    meta = json.loads(first.with_suffix(".json").read_text())
    assert meta["settings"]["model"] == "resnet62" and meta["settings"]["data_options"] == {
        "classes": [0, 1, 2],
        "train_size": 40,
    }
    assert meta["hash"].startswith(first.stem.rsplit("-", 1)[1]) and meta["pretrain_seconds"] > 0

    def no_training(*args, **kwargs):
        raise AssertionError("a cached checkpoint was trained again")

    monkeypatch.setattr("recede.runs.run.train", no_training)  # the one training loop call (train_method)
    again, said = _pretrain(tmp_path / "a", capsys)
    assert again == first and said.startswith("reusing ") and "no training" in said
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted([first.name, first.with_suffix(".json").name])
    with pytest.raises(AssertionError, match="trained again"):  # --overwrite: train and write again
        main(["pretrain", *TINY_SOURCE, "--out", str(tmp_path / "a"), "--overwrite"])


def test_the_hash_covers_every_setting():
    base = pretrain.settings(build_parser().parse_args(["pretrain", *TINY_SOURCE]))
    for flags in (
        ["--seed", "1"],
        ["--lr", "0.02"],
        ["--epochs", "2"],
        ["--data-opt", "classes=[0, 1]"],
        ["--model-opt", "widths=[2, 4]"],
        ["--optimizer", "adam"],
    ):
        other = pretrain.settings(build_parser().parse_args(["pretrain", *TINY_SOURCE, *flags]))
        assert pretrain.content_hash(other) != pretrain.content_hash(base), flags
    assert pretrain.content_hash({**base, "format_version": 2}) != pretrain.content_hash(base)


def test_a_damaged_cache_entry_is_trained_again(tmp_path, capsys):
    first, _ = _pretrain(tmp_path, capsys)
    good = first.read_bytes()
    first.write_bytes(good[:-4] + b"\0\0\0\0")
    again, said = _pretrain(tmp_path, capsys)
    assert said.startswith("wrote ") and again.read_bytes() == good


@pytest.mark.parametrize("name", sorted(TINY))
def test_init_loads_into_every_registry_model(tmp_path, name):
    options, _, _ = TINY[name]
    torch.manual_seed(0)
    source = models.build(name, **options())
    path = tmp_path / "source.safetensors"
    save_file(pretrain.tensors_to_save(source), str(path))
    torch.manual_seed(1)
    fresh = models.build(name, **options())
    assert any(not torch.equal(a, b) for a, b in zip(source.state_dict().values(), fresh.state_dict().values()))
    pretrain.load_init(fresh, str(path))
    for (key, a), b in zip(source.state_dict().items(), fresh.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("name", ["vit-b16", "llama"])
def test_init_loads_a_plain_checkpoint_into_a_model_with_adapters(tmp_path, name):
    """A model built with ``adapter=lora`` takes its base model's file: ``X.weight`` goes to
    ``X.base_layer.weight``, the LoRA tensors keep their (seeded) initialisation; a base weight
    of the wrong shape is still one line."""
    options, _, _ = TINY[name]
    torch.manual_seed(0)
    source = models.build(name, **options())
    path = tmp_path / "source.safetensors"
    save_file(pretrain.tensors_to_save(source), str(path))
    torch.manual_seed(1)
    adapted = models.build(name, **options(), adapter="lora", adapter_rank=1, adapter_alpha=4.0)
    lora = {k: v.clone() for k, v in adapted.state_dict().items() if ".lora_" in k}
    assert lora
    pretrain.load_init(adapted, str(path))
    loaded = adapted.state_dict()
    wrapped = [k for k in loaded if ".base_layer." in k]
    assert wrapped
    for key, value in source.state_dict().items():
        mine = (
            key if key in loaded else key.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        )
        torch.testing.assert_close(loaded[mine], value, rtol=0, atol=0, msg=key)
    for key, value in lora.items():
        assert torch.equal(loaded[key], value), key
    bad = {
        k: (v[:-1] if k == next(iter(source.state_dict())) else v) for k, v in pretrain.tensors_to_save(source).items()
    }
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match=r"^--init: weights in .* do not fit") as err:
        pretrain.load_init(adapted, str(tmp_path / "bad.safetensors"))
    assert "\n" not in str(err.value)


def test_resnet62_adapter_option_equals_the_adapter_applied_after_init(tmp_path):
    """``resnet62(adapter="lokr")`` then ``--init`` (new heads, ``heads.*`` skipped) gives the very
    model of the older order, built, the checkpoint loaded, then adapted: the adapters draw the
    same random numbers and the file loads into their ``base_layer``."""
    from recede.models.peft_adapters import adapter_parameters, apply_adapter

    options, _, _ = TINY["resnet62"]
    adapter = "lokr"
    torch.manual_seed(0)
    path = tmp_path / "source.safetensors"
    save_file(pretrain.tensors_to_save(models.build("resnet62", **options())), str(path))
    torch.manual_seed(1)
    before = models.build("resnet62", **options())
    pretrain.load_init(before, str(path), ["heads.*"])
    apply_adapter(before, adapter, r=1, alpha=4.0)
    torch.manual_seed(1)
    after = models.build("resnet62", **options(), adapter=adapter, adapter_rank=1, adapter_alpha=4.0)
    pretrain.load_init(after, str(path), ["heads.*"])
    assert adapter_parameters(after)
    old, new = before.state_dict(), after.state_dict()
    assert list(old) == list(new)
    for key in old:
        assert torch.equal(old[key], new[key]), key
    assert [n for n, p in before.named_parameters() if p.requires_grad] == [
        n for n, p in after.named_parameters() if p.requires_grad
    ]


def test_a_user_state_dict_starts_every_run_of_the_workload_and_skip_keeps_heads_fresh(tmp_path, capsys):
    args = build_parser().parse_args(["train", *TARGET])
    torch.manual_seed(5)
    source = models.build("resnet62", num_classes=2, widths=(2, 3), blocks_per_stage=1, in_channels=1)
    path = tmp_path / "mine.pt"
    torch.save(source.state_dict(), path)  # a user's own weights-only .pt works like a safetensors file
    args.init, args.init_skip = str(path), ["heads.*"]
    workload = Workload.from_args(args)
    assert "heads.1.fc.weight" in capsys.readouterr().out
    a, b = workload.build(0).state_dict(), workload.build(1).state_dict()
    for key, value in source.state_dict().items():
        if key.startswith("heads."):
            assert not torch.equal(a[key], b[key]), key  # fresh, seeded
        else:
            assert torch.equal(a[key], value) and torch.equal(b[key], value), key


def test_init_from_a_pretrained_checkpoint_through_the_command_line(tmp_path, capsys):
    file, _ = _pretrain(tmp_path / "cache", capsys)
    # the source has 3 classes, the target 2: the final heads differ, so they must be named
    assert main(["train", *TARGET, "--init", str(file), "--out", str(tmp_path / "run")]) == 2
    assert not (tmp_path / "run").exists()
    assert main(["train", *TARGET, "--init", str(file), "--init-skip", "heads.*", "--out", str(tmp_path / "run")]) == 0
    assert "tensors loaded; fresh (--init-skip): heads.0.fc.weight" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["train", "compare"])
def test_a_mismatch_is_one_line_naming_the_key_and_writes_nothing(tmp_path, capfd, command):
    wrong = models.build("resnet62", num_classes=2, widths=(2, 4), blocks_per_stage=1, in_channels=1)
    path = tmp_path / "wrong.safetensors"
    save_file(pretrain.tensors_to_save(wrong), str(path))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier")
    extra = ["--methods", "bp", "ff"] if command == "compare" else []
    assert main([command, *TARGET, *extra, "--init", str(path), "--out", str(out)]) == 2
    line = _one_line(capfd)
    assert f"recede {command}: error: --init: weights in {path} do not fit BlockNet" in line
    assert "shape mismatch: blocks.0.0.0.weight: file (2, 1, 3, 3)" not in line  # widths (2, 4) vs (2, 3)
    assert "blocks.1.0.0.weight: file (4, 2, 3, 3) vs model (3, 2, 3, 3)" in line
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_a_pickle_given_to_init_is_refused_and_runs_nothing(tmp_path, capfd):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"blocks.0.0.0.weight": torch.zeros(2, 1, 3, 3), "evil": Payload(marker)}, path)
    assert main(["train", *TARGET, "--init", str(path), "--out", str(tmp_path / "out")]) == 2
    line = _one_line(capfd)
    assert "--init: " in line and "cannot be read as a state dict" in line
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--init-skip", "heads.*"], "--init-skip needs --init FILE"),
        (["--init", "MISSING", "--init-skip", "head.*"], "not found"),
        (["--init", "SOURCE", "--init-skip", "nothing.*"], "--init-skip 'nothing.*' matches no parameter"),
    ],
)
def test_init_refusals_are_one_line(tmp_path, capfd, flags, expected):
    source = models.build("resnet62", num_classes=2, widths=(2, 3), blocks_per_stage=1, in_channels=1)
    path = tmp_path / "source.safetensors"
    save_file(pretrain.tensors_to_save(source), str(path))
    flags = [str(path) if f == "SOURCE" else str(tmp_path / "missing.pt") if f == "MISSING" else f for f in flags]
    assert main(["train", *TARGET, *flags, "--out", str(tmp_path / "out")]) == 2
    assert expected in _one_line(capfd)
    assert not (tmp_path / "out").exists()


def test_pretrain_refuses_without_a_model_and_writes_nothing(tmp_path, capfd):
    assert main(["pretrain", "--out", str(tmp_path / "cache")]) == 2
    assert "give --preset" in _one_line(capfd)
    assert main(["pretrain", *TINY_SOURCE, "--model-opt", "widths=[0]", "--out", str(tmp_path / "cache")]) == 2
    _one_line(capfd)
    assert not (tmp_path / "cache").exists()


def test_presets_name_registry_models_and_offline_data():
    for name in pretrain.PRESETS:
        values = pretrain.settings(
            argparse.Namespace(**{**vars(build_parser().parse_args(["pretrain", "--preset", name])), "preset": name})
        )
        models.check_options(values["model"], values["model_options"])
        assert values["data"] == "text" if name == "llama" else values["data_options"]["classes"] == [0, 1, 2, 3, 4]


def test_digits_classes_are_the_named_digits_relabelled_and_disjoint():
    from recede import data

    full, source, target = (
        data.load("digits"),
        data.load("digits", classes=(0, 1, 2, 3, 4)),
        data.load("digits", classes=(9, 5), train_size=30),
    )
    assert source.output_dim == 5 and target.output_dim == 2 and len(target.train) == 30
    xs, ys = full.test.tensors
    for x, y in zip(*target.test.tensors):  # the same images as the full split, 9 → 0 and 5 → 1
        match = (xs == x).flatten(1).all(1)
        assert int(ys[match][0]) == (9, 5)[int(y)]
    assert len(source.test) + len(data.load("digits", classes=(5, 6, 7, 8, 9)).test) == len(full.test)
    with pytest.raises(ValueError, match="distinct digits"):
        data.load("digits", classes=(1, 1))


def test_distorted_digits_keep_labels_and_split_and_each_image_has_one_distortion():
    from recede import data
    from recede.data.images import distorted

    plain = data.load("digits", classes=(5, 6, 7, 8, 9))
    target = data.load("digits", classes=(5, 6, 7, 8, 9), distort=1.0)
    small = data.load("digits", classes=(5, 6, 7, 8, 9), distort=1.0, train_size=40)
    source = data.load("digits", classes=(0, 1, 2, 3, 4), distort=1.0, copies=3)
    assert torch.equal(target.train.tensors[1], plain.train.tensors[1])  # same images, same order
    assert torch.equal(target.test.tensors[1], plain.test.tensors[1])
    moved = (target.train.tensors[0] - plain.train.tensors[0]).flatten(1).abs().amax(1)
    assert (moved > 0.1).float().mean() > 0.95  # nearly every image is moved
    # an image's distortion does not depend on train_size: the test split and the first 40 agree
    assert torch.equal(small.test.tensors[0], target.test.tensors[0])
    assert torch.equal(small.train.tensors[0], target.train.tensors[0][:40])
    # copies: n distorted versions of each training image, with its label; the first is copy 0
    n = len(data.load("digits", classes=(0, 1, 2, 3, 4)).train)
    assert len(source.train) == 3 * n and torch.equal(source.train.tensors[1], source.train.tensors[1][:n].repeat(3))
    first, second = source.train.tensors[0][:n], source.train.tensors[0][n : 2 * n]
    assert not torch.equal(first, second)
    assert torch.equal(first, data.load("digits", classes=(0, 1, 2, 3, 4), distort=1.0).train.tensors[0])
    assert torch.equal(
        data.load("digits", distort=0.5, seed=2).train.tensors[0],
        data.load("digits", distort=0.5, seed=2).train.tensors[0],
    )
    # strength 0 is the identity map
    images = torch.rand(4, 1, 8, 8)
    torch.testing.assert_close(distorted(images, 0.0, torch.Generator().manual_seed(0)), images)
    for bad, match in (({"distort": 1.5}, "distort must be in"), ({"copies": 0}, "copies must be in")):
        with pytest.raises(ValueError, match=match):
            data.load("digits", **bad)


def test_init_from_a_yaml_config(tmp_path, capsys):
    source = models.build("resnet62", num_classes=2, widths=(2, 3), blocks_per_stage=1, in_channels=1)
    path = tmp_path / "source.safetensors"
    save_file(pretrain.tensors_to_save(source), str(path))
    config = tmp_path / "run.yaml"
    config.write_text(f"init: {path}\ninit_skip: ['heads.1.*']\n")
    args = parse_with_config(build_parser(), ["train", *TARGET, "--config", str(config)])
    assert args.init == str(path) and args.init_skip == ["heads.1.*"]
    net = Workload.from_args(args).build(3)
    assert "fresh (--init-skip): heads.1.fc.weight, heads.1.fc.bias" in capsys.readouterr().out
    for key, value in source.state_dict().items():
        assert torch.equal(net.state_dict()[key], value) != key.startswith("heads.1."), key


def test_a_run_without_init_has_the_identity_of_a_run_written_before_init_existed():
    from recede.runs.run import identity

    args = build_parser().parse_args(["train", *TARGET])
    assert identity(args)["init"] is None and identity(args)["init_skip"] is None  # saved.get() of an old config
