"""Horizon selection (Paper A §4, Algorithm 1) against brute force on the fitted curves."""

import json
import math
import warnings

import numpy as np
import pytest
import torch

from recede import models
from recede.cli import main
from recede.horizon.selection import InfeasibleWarning, choose, objective_value, relative_scores, select_horizon, solve


def brute_force(cos, mem, T, objective, eps, lam, cost, c, M0):
    """Independent brute force: fit (eqs. 15–16), then scan every h = 1..T by hand."""
    hs = sorted(cos)
    cos_fit = np.polyfit(hs, [cos[h] for h in hs], min(3, len(hs) - 1))
    mem_fit = np.polyfit(hs, [mem[h] for h in hs], min(1, len(hs) - 1))
    best, best_key = None, None
    for h in range(1, T + 1):
        ch = min(max(np.polyval(cos_fit, h), 0.0), 1.0)
        r = ch * ch
        m = np.polyval(mem_fit, h)
        C = c * m / M0 if cost == "linear" else c * math.ceil(m / M0 - 1e-9)
        if objective == "constraint":
            if r < 1 - eps:
                continue
            key = (C, -r, h)
        else:
            key = (-r + lam * C, h)
        if best_key is None or key < best_key:
            best, best_key = h, key
    return best  # None when O1 is infeasible


def random_case(rng):
    T = int(rng.integers(4, 40))
    H = sorted(set(rng.choice(np.arange(1, T + 1), size=min(T, int(rng.integers(2, 7))), replace=False).tolist()) | {T})
    # a monotone-ish fidelity curve with noise, and affine memory with noise
    p, top = rng.uniform(1, 4), rng.choice([1.0, rng.uniform(0.7, 1.0)])  # top < 1: O1 may be infeasible
    cos = {h: float(top - rng.uniform(0.1, 0.6) * (1 - h / T) ** p + rng.normal(0, 0.02)) for h in H}
    a, b = rng.uniform(1e3, 1e5), rng.uniform(0, 1e5)
    mem = {h: float(a * h + b + rng.normal(0, 0.01 * a)) for h in H}
    return T, cos, mem


@pytest.mark.parametrize("objective", ["constraint", "weighted"])
@pytest.mark.parametrize("cost", ["linear", "ladder"])
def test_choose_matches_brute_force(objective, cost):
    rng = np.random.default_rng(hash((objective, cost)) % 2**32)
    infeasible_seen = 0
    for _ in range(60):
        T, cos, mem = random_case(rng)
        eps = float(rng.uniform(0.001, 0.3))
        lam = float(rng.uniform(0.0, 2.0))
        M0 = max(mem.values()) * (1 if cost == "linear" else 0.3)
        expected = brute_force(cos, mem, T, objective, eps, lam, cost, 1.0, M0)
        choice = solve(cos, mem, T, objective, eps=eps, weight=lam, cost_shape=cost)
        if expected is None:
            infeasible_seen += 1
            assert not choice.feasible and choice.h == T
        else:
            assert choice.feasible and choice.h == expected
    if objective == "constraint":
        assert infeasible_seen > 0  # the random cases exercise the fallback too


def test_infeasible_constraint_warns_and_falls_back_to_T():
    cos = {1: 0.2, 5: 0.4, 10: 0.6}
    mem = {1: 10.0, 5: 50.0, 10: 100.0}
    with pytest.warns(InfeasibleWarning, match="no horizon meets"):
        assert choose(cos, mem, 10, "constraint", eps=0.01) == 10
    choice = solve(cos, mem, 10, "constraint", eps=0.01)
    assert not choice.feasible and "falling back to h = T = 10" in choice.message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert choose(cos, mem, 10, "constraint", eps=0.7) < 10  # r̂(10) = 0.36 ≥ 0.3


def test_ladder_ties_go_to_the_more_accurate_horizon():
    # M = 10h, M0 = 0.3·100 = 30: h = 1, 2, 3 all cost one device; r̂ grows with h.
    cos = {1: 0.95, 4: 0.97, 7: 0.99, 10: 1.0}
    mem = {h: 10.0 * h for h in cos}
    assert choose(cos, mem, 10, "constraint", eps=0.2, cost_shape="ladder") == 3
    # O2 with a large λ: fewest devices, and the best r̂ among them
    assert choose(cos, mem, 10, "weighted", weight=1.0, cost_shape="ladder") == 3


def test_fit_degree_drops_with_few_points():
    assert choose({4: 0.9}, {4: 1.0}, 8, "weighted", weight=0.1) == 1  # constant fits: cheapest wins
    choice = solve({2: 0.5, 8: 1.0}, {2: 2.0, 8: 8.0}, 8, "weighted", weight=0.0)
    assert choice.cos_fit.order == 1 and choice.h == 8


def test_weighted_objective_is_minimised_not_maximised():
    cos = {1: 0.5, 5: 0.7, 10: 0.95}
    mem = {1: 1.0, 5: 5.0, 10: 10.0}
    assert choose(cos, mem, 10, "weighted", weight=0.0) == 10  # accuracy only: BP
    assert choose(cos, mem, 10, "weighted", weight=100.0) == 1  # memory only: FF


def test_objective_value_and_relative_scores():
    assert objective_value(0.95, 50, "constraint", eps=0.1, M0=100) == 0.5
    assert objective_value(0.85, 50, "constraint", eps=0.1, M0=100) is None
    assert objective_value(0.9, 61, "weighted", weight=0.5, cost_shape="ladder", M0=30) == pytest.approx(-0.9 + 1.5)
    rel = relative_scores({"BP": 1.0, "FF": None, "A": 0.25, "B": 0.5})
    assert rel == {"BP": 1.0, "FF": 1.5, "A": 0.0, "B": pytest.approx(1 / 3)}
    assert relative_scores({"A": 2.0, "B": 2.0}) == {"A": 0.0, "B": 0.0}


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="eps"):
        choose({1: 1.0}, {1: 1.0}, 4, "constraint")
    with pytest.raises(ValueError, match="weight"):
        choose({1: 1.0}, {1: 1.0}, 4, "weighted")
    with pytest.raises(ValueError, match="objective"):
        choose({1: 1.0}, {1: 1.0}, 4, "max", weight=1)
    with pytest.raises(ValueError, match="cost"):
        choose({1: 1.0}, {1: 1.0}, 4, "weighted", weight=1, cost_shape="step")
    with pytest.raises(ValueError, match="outside"):
        choose({9: 1.0}, {1: 1.0}, 4, "weighted", weight=1)
    with pytest.raises(ValueError, match="empty"):
        choose({}, {1: 1.0}, 4, "weighted", weight=1)


def test_select_horizon_on_a_network():
    torch.manual_seed(0)
    net = models.build("resmlp", depth=8)
    probe = [(torch.randn(32, 1), torch.randn(32, 4)) for _ in range(2)]
    result = select_horizon(net, probe, [1, 3, 5, 8], objective="weighted", weight=0.1)
    assert result.fidelity.horizons == [1, 3, 5, 8]
    assert result.choice.horizons.tolist() == list(range(1, 9))
    assert result.h == solve(result.fidelity.cos, result.fidelity.memory, 8, "weighted", weight=0.1).h
    rows = result.table()
    assert len(rows) == 8 and rows[result.h - 1]["selected"] == "←"
    assert rows[2]["cos (measured)"] == pytest.approx(result.fidelity.cos[3])


def test_cli_select(tmp_path, capsys):
    code = main(
        [
            "select",
            "--model",
            "linear-resnet",
            "--data",
            "linear",
            "--data-opt",
            "n=200",
            "--horizons",
            "1,5,10,15",
            "--objective",
            "constraint",
            "--eps",
            "0.05",
            "--batches",
            "2",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    saved = json.loads((tmp_path / "selection.json").read_text())
    assert 1 <= saved["h"] <= 15 and len(saved["table"]) == 15
    assert (tmp_path / "report.md").exists()
    assert main(["select", "--objective", "constraint", "--out", str(tmp_path / "eps")]) == 2
    assert "eps" in capsys.readouterr().err
    weights = tmp_path / "trained.pt"
    torch.save(models.build("linear-resnet", depth=4).state_dict(), weights)
    assert (
        main(
            [
                "select",
                "--model",
                "linear-resnet",
                "--model-opt",
                "depth=4",
                "--data",
                "linear",
                "--data-opt",
                "n=100",
                "--weight",
                "0.1",
                "--weights",
                str(weights),
                "--batches",
                "1",
                "--out",
                str(tmp_path / "w"),
            ]
        )
        == 0
    )
    assert (
        main(["select", "--weight", "1", "--weights", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "m")]) == 2
    )
    assert "missing.pt" in capsys.readouterr().err
