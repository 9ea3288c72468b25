"""recede.runs.preflight: checks that write nothing and change nothing, then the start of a run."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from recede import data, models
from recede.cli import build_parser, main
from recede.cli.options import parse_with_config, resolved
from recede.keywords import check_keywords
from recede.methods import parse_method
from recede.runs import preflight
from recede.runs.run import Workload, run_method

CPU = torch.device("cpu")


def _bn_net() -> tuple[torch.nn.Module, data.Task]:
    task = data.load("digits")
    torch.manual_seed(0)
    return models.build("resnet62", task, widths=[4, 8], blocks_per_stage=1), task


def test_probe_changes_no_buffer_rng_state_or_mode():
    net, task = _bn_net()
    net.blocks[1].eval()  # a mix of modes must come back as it was
    modes = [m.training for m in net.modules()]
    state = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    preflight.probe(net, task, CPU)
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())
    assert [m.training for m in net.modules()] == modes
    # the check can fail: a forward in train mode moves BatchNorm's statistics
    net.train()(next(iter(task.train))[0][None].repeat(2, 1, 1, 1))
    assert not torch.equal(state["blocks.0.0.1.running_mean"], net.state_dict()["blocks.0.0.1.running_mean"])


def test_probe_names_the_block_or_depth_that_does_not_fit():
    net, _ = _bn_net()
    with pytest.raises(ValueError, match=r"does not fit dataset 'trig' \(inputs \(1,\), regression\): block 0"):
        preflight.probe(net, data.load("trig", n=10, n_test=2), CPU)
    mlp = models.build("resmlp", in_dim=64, out_dim=4, depth=3)  # 4 outputs, 10 classes
    flat = data.Task(
        "flat",
        *[torch.utils.data.TensorDataset(torch.randn(4, 64), torch.randint(0, 10, (4,)))] * 2,
        "classification",
        (64,),
        10,
    )
    with pytest.raises(ValueError, match="depth 1"):
        preflight.probe(mlp, flat, CPU)


def test_a_cli_run_trains_exactly_as_without_the_checks(tmp_path):
    """The first steps of a BatchNorm model under `recede train` (which probes the model) are
    those of the same training without any check."""
    argv = [
        "train",
        "--model",
        "resnet62",
        "--model-opt",
        "widths=[4, 8]",
        "--model-opt",
        "blocks_per_stage=1",
        "--data",
        "digits",
        "--epochs",
        "1",
        "--batch-size",
        "128",
        "--momentum",
        "0.9",
        "--no-progress",
        "--out",
        str(tmp_path / "cli"),
    ]
    assert main(argv) == 0
    cli = json.loads((tmp_path / "cli" / "metrics.json").read_text())["history"]["BP"]
    args = parse_with_config(build_parser(), argv)
    task = data.load("digits")
    workload = Workload(task, "resnet62", {"widths": [4, 8], "blocks_per_stage": 1}, CPU)
    plain = run_method(workload, parse_method("bp"), args, out=tmp_path / "plain")
    assert [e.as_dict() | {"seconds": 0} for e in plain.history] == [e | {"seconds": 0} for e in cli]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"width": "abc"}, "option width must be an integer, got 'abc'"),
        ({"width": True}, "option width must be an integer, got True"),
        ({"head": 3}, "option head must be a string, got 3"),
        ({"colour": 1}, "has no option(s) ['colour']"),
    ],
)
def test_keywords_are_checked_against_the_annotations(options, message):
    from recede.models.mlp import resmlp

    with pytest.raises(ValueError) as err:
        check_keywords(resmlp, options, "model 'resmlp'")
    assert message in str(err.value)
    from recede.models.resnet import resnet62

    check_keywords(resnet62, {"widths": [4, 8], "num_classes": 3}, "model")  # a list for a tuple
    with pytest.raises(ValueError, match="must be a list of integers"):
        check_keywords(resnet62, {"widths": [4, 0.5]}, "model")
    from recede.data.synthetic import trig

    with pytest.raises(ValueError, match="finite number, got nan"):
        check_keywords(trig, {"noise": float("nan")}, "dataset")
    from recede.models.sequential import sequential

    with pytest.raises(ValueError, match=r"needs option\(s\) model \(a Sequential object \(Python only\)\)"):
        check_keywords(sequential, {}, "model 'sequential'")


@pytest.mark.parametrize(
    "text, message", [("foo", "is not a device"), ("meta", "not meta"), ("cuda:99", "this machine has")]
)
def test_device(text, message):
    assert preflight.device("cpu") == CPU
    with pytest.raises(ValueError, match=message):
        preflight.device(text)


def _args(out: Path, **kw) -> argparse.Namespace:
    return argparse.Namespace(out=str(out), resume=kw.get("resume", False), overwrite=kw.get("overwrite", False))


def test_out_folder_rules(tmp_path, monkeypatch):
    preflight.check_out(_args(tmp_path / "new" / "deeper"))  # created only when the run starts
    assert not (tmp_path / "new").exists()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    preflight.check_out(_args(tmp_path / "run"))  # a folder without results is fine
    (tmp_path / "run" / "metrics.json").write_text("{}")
    with pytest.raises(ValueError, match=r"holds the results of an earlier run \(metrics.json\)"):
        preflight.check_out(_args(tmp_path / "run"))
    preflight.check_out(_args(tmp_path / "run", overwrite=True))
    preflight.check_out(_args(tmp_path / "run", resume="auto"))
    with pytest.raises(ValueError, match="contradict"):
        preflight.check_out(_args(tmp_path / "run", resume=True, overwrite=True))
    with pytest.raises(ValueError, match="is a file"):
        preflight.check_out(_args(tmp_path / "run" / "notes.txt"))
    with pytest.raises(ValueError, match="is a file"):
        preflight.check_out(_args(tmp_path / "run" / "notes.txt" / "below"))
    monkeypatch.setenv("RANK", "1")  # another rank does not write, so it does not check
    preflight.check_out(_args(tmp_path / "run"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_out_is_refused(tmp_path):
    (tmp_path / "locked").mkdir(mode=0o555)
    with pytest.raises(ValueError, match="cannot write in"):
        preflight.check_out(_args(tmp_path / "locked" / "run"))


def test_unwritable_out_is_refused():
    with pytest.raises(ValueError, match="cannot write in /proc"):
        preflight.check_out(_args(Path("/proc/recede-out")))


def test_start_replaces_the_earlier_run_and_writes_the_config(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "old-method.pt").write_bytes(b"old")
    (run / "metrics.json").write_text("{}")
    (run / "notes.txt").write_text("mine")
    parser = build_parser()
    args = parse_with_config(parser, ["train", "--epochs", "2", "--out", str(run), "--overwrite"])
    args.resolved = resolved(parser, args)
    preflight.start(args)
    aside = [p.name for p in run.iterdir() if p.name.startswith(".replaced-")]
    assert sorted(p.name for p in run.iterdir()) == sorted(["config.yaml", "notes.txt", *aside]) and len(aside) == 1
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["epochs"] == 2 and "overwrite" not in saved and "resume" not in saved
    preflight.commit()  # the run began: the earlier run's files go
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "notes.txt"]


def test_a_run_refused_after_start_puts_the_earlier_run_back(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "bp.pt").write_bytes(b"old")
    (run / "config.yaml").write_text("epochs: 1\n")
    (run / "notes.txt").write_text("mine")
    parser = build_parser()
    args = parse_with_config(parser, ["train", "--epochs", "2", "--out", str(run), "--overwrite"])
    args.resolved = resolved(parser, args)
    preflight.start(args)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "ff.pt").write_bytes(b"new")
    assert preflight.rollback()
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml", "notes.txt"]
    assert (run / "config.yaml").read_text() == "epochs: 1\n"
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["bp.pt"]
    fresh = tmp_path / "a" / "b"  # a run that created its folder (and the one above) removes them
    args = parse_with_config(parser, ["train", "--out", str(fresh)])
    args.resolved = resolved(parser, args)
    preflight.start(args)
    assert (fresh / "config.yaml").exists() and preflight.rollback()
    assert not (tmp_path / "a").exists()
