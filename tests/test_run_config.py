"""recede.RunConfig and recede.run: one run path that YAML, flags and Python all reach."""

from __future__ import annotations

import json

import pytest

import recede
from recede.cli import build_parser, main
from recede.cli.options import parse_with_config
from recede.runs.config import LoopConfig, OutputConfig, RunConfig, WorkloadConfig


def tiny(out, **loop) -> recede.RunConfig:
    return recede.RunConfig(
        workload=WorkloadConfig(
            model="resmlp", data="trig", model_options={"depth": 3}, data_options={"n": 60, "n_test": 20}
        ),
        methods=["bp", "mpc:2"],
        loop=LoopConfig(epochs=2, batch_size=20, **loop),
        output=OutputConfig(out=str(out), progress=False),
    )


def test_recede_run_of_a_run_config_writes_the_results_folder(tmp_path):
    result = recede.run(tiny(tmp_path / "py"))
    assert [row["method"] for row in result.rows] == ["BP", "MPC(h=2)"]
    assert result.report == tmp_path / "py" / "report.md"
    for name in ("report.md", "metrics.json", "loss.png", "config.yaml", "checkpoints/bp.pt"):
        assert (tmp_path / "py" / name).exists(), name
    metrics = json.loads((tmp_path / "py" / "metrics.json").read_text())
    assert [r["method"] for r in metrics["rows"]] == ["BP", "MPC(h=2)"]
    assert len(metrics["history"]["BP"]) == 2
    assert "| BP |" in (tmp_path / "py" / "report.md").read_text()


def test_python_and_the_command_line_train_alike(tmp_path):
    """The same run from Python and from `recede train` gives the same epochs."""
    python = recede.run(tiny(tmp_path / "py"))
    assert (
        main(
            [
                "train",
                "--model-opt",
                "depth=3",
                "--data-opt",
                "n=60",
                "--data-opt",
                "n_test=20",
                "--epochs",
                "2",
                "--batch-size",
                "20",
                "--method",
                "bp",
                "--method",
                "mpc:2",
                "--no-progress",
                "--out",
                str(tmp_path / "cli"),
            ]
        )
        == 0
    )
    cli = json.loads((tmp_path / "cli" / "metrics.json").read_text())["history"]
    for result in python.runs[0]["results"]:
        assert [e.as_dict() | {"seconds": 0} for e in result.history] == [e | {"seconds": 0} for e in cli[result.label]]


def test_the_flags_build_the_config_the_python_api_would():
    args = parse_with_config(
        build_parser(),
        [
            "train",
            "--model-opt",
            "depth=3",
            "--data-opt",
            "n=60",
            "--batch-size",
            "20",
            "--bpm-period",
            "7",
            "--no-progress",
        ],
    )
    config = RunConfig.from_options(vars(args))
    assert config.workload.model_options == {"depth": 3} and config.workload.data_options == {"n": 60}
    assert config.loop.batch_size == 20 and config.bpm.period == 7 and config.output.progress is False
    assert RunConfig.from_options(config.options()) == config  # what config.yaml holds reads back


def test_a_dict_builds_the_same_config_and_names_unknown_keys():
    config = RunConfig.from_dict({"loop": {"epochs": 3}, "methods": ["ff"]})
    assert config.loop.epochs == 3 and config.methods == ["ff"]
    assert RunConfig.from_dict(config.as_dict()) == config
    with pytest.raises(ValueError, match="loop has no field"):
        RunConfig.from_dict({"loop": {"epoch": 3}})
    with pytest.raises(ValueError, match="unknown key"):
        RunConfig.from_dict({"looop": {}})


@pytest.mark.parametrize(
    "change, field",
    [
        ({"loop": {"epochs": 0}}, "loop.epochs"),
        ({"loop": {"batch_size": 2.5}}, "loop.batch_size"),
        ({"optimizer": {"lr": -1.0}}, "optimizer.lr"),
        ({"optimizer": {"name": "lbfgs"}}, "optimizer.name"),
        ({"optimizer": {"momentum": 1.0}}, "optimizer.momentum"),
        ({"bpm": {"lam": 2.0}}, "bpm.lam"),
        ({"bpm": {"rule": "optimal"}}, "bpm.rule"),
        ({"measure": {"clock": "sundial"}}, "measure.clock"),
        ({"loop": {"seeds": 101}}, "loop.seeds"),
        ({"methods": []}, "methods"),
    ],
)
def test_validation_names_the_field_in_one_line(change, field):
    with pytest.raises(ValueError) as err:
        RunConfig.from_dict(change)
    assert str(err.value).startswith(field) and "\n" not in str(err.value)


def test_a_refused_python_run_leaves_an_earlier_run_as_it_was(tmp_path):
    recede.run(tiny(tmp_path / "a"))
    before = {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir() if p.is_file()}
    with pytest.raises(ValueError, match="holds the results of an earlier run"):
        recede.run(tiny(tmp_path / "a"))
    bad = tiny(tmp_path / "a")
    bad.output.overwrite = True
    bad.methods = ["mpc:99"]
    with pytest.raises(ValueError):
        recede.run(bad)
    assert {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir() if p.is_file()} == before


def test_a_rule_function_trains_a_bpm_method_and_the_step_hook_sees_its_refreshes():
    """From Python, ``bpm.rule`` takes a Rule function (a study's ablated rule); the config
    names it; ``train_method``'s step hook is handed the method it trains."""
    import dataclasses

    import torch

    from recede.bpm import scalars
    from recede.bpm.estimator import BPModified
    from recede.runs.config import BPMConfig, MeasureConfig
    from recede.runs.run import Workload, train_method

    calls = []

    def unit_a(m, B_prime, check, previous=None):
        calls.append(B_prime)
        return torch.ones_like(m.hh), scalars.fresh_lambda(m, B_prime)

    config = dataclasses.replace(
        tiny("unused"),
        methods=["bpm-ff"],
        output=OutputConfig(out=None, progress=False),
        bpm=BPMConfig(period=2, samples=16, rule=unit_a),
        measure=MeasureConfig(paid=False),
    ).validate()
    assert config.options()["bpm_rule"].endswith("unit_a")
    assert config.identity()["bpm_rule"] == config.options()["bpm_rule"]
    with pytest.raises(ValueError, match="bpm.rule must be one of"):
        dataclasses.replace(config, bpm=BPMConfig(rule="unit_a")).validate()
    task = recede.data.load("trig", n=60, n_test=20)
    workload = Workload.of(task, "resmlp", {"depth": 3}, "cpu")
    seen = []
    result = train_method(
        workload,
        "bpm-ff",
        config,
        out=None,
        on_step=lambda method, epoch, step, loss: seen.append((epoch, step, method.refreshes)),
    )
    assert isinstance(result.method, BPModified) and result.memory is None
    assert [(e, s) for e, s, _ in seen] == [(e, s) for e in range(2) for s in range(3)]
    assert seen[-1][2] == result.method.refreshes == 3 and calls  # refreshes at steps 1, 3, 5 ran the rule


def test_a_study_s_start_model_is_copied_and_the_epoch_hook_sees_the_trained_net():
    """``Workload.start``: every fresh model is a copy of the study's start (which stays as it
    was); ``on_epoch(net, record)`` is handed the net being trained, after each epoch."""
    import dataclasses

    import torch

    from recede.runs.config import MeasureConfig
    from recede.runs.run import Workload, train_method

    task = recede.data.load("trig", n=60, n_test=20)
    start = recede.models.build("resmlp", task, depth=3)
    with torch.no_grad():
        for p in start.parameters():
            p.fill_(0.01)
    before = {k: v.clone() for k, v in start.state_dict().items()}
    workload = Workload(task, "resmlp", {"depth": 3}, torch.device("cpu"), start=start)
    assert all(torch.equal(v, workload.build(5).state_dict()[k]) for k, v in before.items())
    config = dataclasses.replace(
        tiny("unused"),
        methods=["mpc:2"],
        output=OutputConfig(out=None, progress=False),
        measure=MeasureConfig(paid=False),
    ).validate()
    seen = []
    result = train_method(
        workload, "mpc:2", config, out=None, on_epoch=lambda net, record: seen.append((net, record.epoch))
    )
    assert [e for _, e in seen] == [0, 1] and all(net is result.net for net, _ in seen)
    assert result.net is not start and all(torch.equal(v, start.state_dict()[k]) for k, v in before.items())
    assert any(not torch.equal(p, q) for p, q in zip(result.net.parameters(), start.parameters()))  # it trained


def test_a_study_s_own_method_trains_without_test_evaluation_and_not_as_a_pipeline():
    """``StudyMethod``: a method no name describes, built on the fresh model; ``measure.test``
    off: no test evaluation after an epoch (the record's test metrics stay empty)."""
    import dataclasses

    from recede.core.engine import MPC
    from recede.runs.config import MeasureConfig, ParallelConfig
    from recede.runs.run import StudyMethod, Workload, train_method

    task = recede.data.load("trig", n=60, n_test=20)
    workload = Workload.of(task, "resmlp", {"depth": 3}, "cpu")
    built = []
    study = StudyMethod("mine", lambda net: built.append(MPC(net, 2)) or built[-1])
    config = dataclasses.replace(
        tiny("unused"),
        methods=None,
        output=OutputConfig(out=None, progress=False),
        measure=MeasureConfig(paid=False, test=False),
    ).validate()
    result = train_method(workload, study, config, out=None)
    assert result.label == "mine" and result.method is built[0] and built[0].net is result.net
    assert [r.test for r in result.history] == [{}, {}]
    reference = train_method(workload, "mpc:2", config, out=None)  # the same run by its name
    assert [r.train_loss for r in reference.history] == [r.train_loss for r in result.history]
    piped = dataclasses.replace(config, parallel=ParallelConfig(pipeline=2))
    with pytest.raises(ValueError, match="mine: a study's own method does not run as a pipeline"):
        train_method(workload, study, piped, out=None)


def test_the_before_train_hook_sees_the_built_run_before_its_first_step_and_not_on_resume(tmp_path):
    """``before_train(net, method, optimizer)``: called once, with the fresh model, its method and
    the optimizer over its parameters, before any step; what it does to the model is what trains
    (filling the weights equals a study's start model so filled); a resumed run skips it."""
    import dataclasses

    import torch

    from recede.runs.config import MeasureConfig
    from recede.runs.run import Workload, train_method

    task = recede.data.load("trig", n=60, n_test=20)
    workload = Workload.of(task, "resmlp", {"depth": 3}, "cpu")
    config = dataclasses.replace(
        tiny("unused"),
        methods=["mpc:2"],
        output=OutputConfig(out=None, progress=False),
        measure=MeasureConfig(paid=False),
    ).validate()
    events: list = []

    def fill(net, method, optimizer) -> None:
        fresh = workload.build(config.loop.seed)
        assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), fresh.state_dict().values()))
        assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in net.parameters()}
        events.append(("before", net, method))
        with torch.no_grad():
            for p in net.parameters():
                p.fill_(0.01)

    result = train_method(
        workload,
        "mpc:2",
        config,
        out=None,
        before_train=fill,
        on_step=lambda method, epoch, step, loss: events.append(("step", epoch, step)),
    )
    assert events[0] == ("before", result.net, result.method) and len(events) == 1 + 2 * 3
    assert all(e[0] == "step" for e in events[1:])
    start = recede.models.build("resmlp", task, depth=3)
    with torch.no_grad():
        for p in start.parameters():
            p.fill_(0.01)
    filled = train_method(dataclasses.replace(workload, start=start), "mpc:2", config, out=None)
    assert [r.train_loss for r in result.history] == [r.train_loss for r in filled.history]

    # resume: the checkpoint holds what the hook did, so it is not called again
    saved = dataclasses.replace(config, output=OutputConfig(out=str(tmp_path), progress=False))
    calls: list = []
    train_method(workload, "mpc:2", saved, out=tmp_path, before_train=lambda *a: calls.append("first"))
    resumed = dataclasses.replace(saved, loop=dataclasses.replace(saved.loop, epochs=3, resume=True))
    again = train_method(workload, "mpc:2", resumed, out=tmp_path, before_train=lambda *a: calls.append("resumed"))
    assert calls == ["first"] and len(again.history) == 3
