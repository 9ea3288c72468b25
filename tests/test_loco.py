"""LoCo as Paper A eq. 21 writes it, against its definition by plain autograd (float64)."""

from __future__ import annotations

import pytest
import torch
from conftest import resmlp_independent

from recede import MPC
from recede.core.loco import LoCoEq21
from recede.methods import build_method, parse_method

pytestmark = pytest.mark.usefixtures("float64")


def eq21_reference(net, x, y) -> dict:
    """Block t: ∇_{u_t} Σ_{s = t}^{min(t+1, T−1)} l(s) with l(0) = 0, l(s) = L(x_{s+1});
    head k ≥ 2: ∇ L(x_k) (the loss it reads); head 1: nothing.  One plain forward per term."""
    T = net.T
    states = [x]
    for block in net.blocks:
        states.append(block(states[-1]))
    grads: dict = {}

    def add(loss, params):
        for p, g in zip(params, torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)):
            if g is not None:
                grads[p] = grads.get(p, 0) + g

    for t in range(T):
        loss = sum(net.depth_loss(states[s + 1], y, s + 1) for s in range(max(t, 1), min(t + 1, T - 1) + 1))
        add(loss, list(net.blocks[t].parameters()))
    for k in range(2, T + 1):
        add(net.depth_loss(states[k], y, k), list(net.head(k).parameters()))
    return grads


def engine(method, net, x, y) -> dict:
    net.zero_grad(set_to_none=True)
    method.backward(x, y)
    return {p: p.grad.clone() for p in net.parameters() if p.grad is not None}


@pytest.mark.parametrize("T", [2, 3, 6])
def test_eq21_equals_its_definition(T):
    torch.manual_seed(T)
    net = resmlp_independent(T=T)
    x, y = torch.randn(7, 5), torch.randint(0, 3, (7,))
    got, want = engine(LoCoEq21(net), net, x, y), eq21_reference(net, x, y)
    assert {id(p) for p in got} == {id(p) for p in want}
    assert max((got[p] - want[p]).abs().max().item() for p in want) < 1e-12


def test_double_differs_from_eq21_in_block_0_and_head_1_only():
    """loco-double (eq. 20 extended to t = 0) = eq. 21 + ∇_{u_0} L(x_1), and it trains head 1."""
    torch.manual_seed(0)
    net = resmlp_independent(T=5)
    x, y = torch.randn(7, 5), torch.randint(0, 3, (7,))
    eq21, double = engine(LoCoEq21(net), net, x, y), engine(MPC(net, 2, double=True), net, x, y)
    block0, head1 = list(net.blocks[0].parameters()), list(net.head(1).parameters())
    extra = torch.autograd.grad(net.depth_loss(net.blocks[0](x), y, 1), block0)
    for p, g in zip(block0, extra):
        assert torch.allclose(double[p], eq21[p] + g, atol=1e-12)
    assert all(p in double and p not in eq21 for p in head1)
    others = [p for p in eq21 if all(p is not q for q in block0)]
    assert max((double[p] - eq21[p]).abs().max().item() for p in others) < 1e-12


def test_loco_eq21_by_name_runs_on_stages():
    torch.manual_seed(1)
    net = resmlp_independent(T=6)
    x, y = torch.randn(7, 5), torch.randint(0, 3, (7,))
    spec = parse_method("loco-eq21:3")
    assert spec.label == "LoCo3-eq21" and spec.eq21 and spec.double
    got = engine(build_method(net, spec), net, x, y)
    want = eq21_reference(net.regroup(3), x, y)
    assert max((got[p] - want[p]).abs().max().item() for p in want) < 1e-12
    with pytest.raises(ValueError, match="loco-eq21"):
        parse_method("bpm-loco-eq21:3")
    with pytest.raises(ValueError, match="at least 2 groups"):
        LoCoEq21(resmlp_independent(T=1))
