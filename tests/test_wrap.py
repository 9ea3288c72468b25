"""recede.wrap: the family dispatcher, grouping into blocks, the head policy, nn.Sequential."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import recede
from recede.wrap import FAMILIES, Layout, register_family


def _seq() -> nn.Sequential:
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 4), nn.Linear(4, 4))


def test_sequential_children_are_the_blocks_held_not_copied():
    seq, head = _seq(), nn.Linear(4, 2)
    net = recede.wrap(seq, head=[nn.Linear(4, 2), nn.Identity(), nn.Linear(4, 2), head], loss_fn=nn.CrossEntropyLoss())
    assert net.T == 4 and all(b is c for b, c in zip(net.blocks, seq)) and net.head(4) is head
    shared = recede.wrap(seq, head=head, loss_fn=nn.CrossEntropyLoss())
    assert shared.shared_head and shared.head(1) is head


def test_blocks_groups_consecutive_units():
    seq = _seq()
    net = recede.wrap(seq, blocks=3, head=nn.Linear(4, 2), loss_fn=nn.CrossEntropyLoss())
    assert net.T == 3
    assert list(net.blocks[0]) == [seq[0], seq[1]] and net.blocks[1] is seq[2] and net.blocks[2] is seq[3]
    x = torch.randn(5, 3)
    assert torch.equal(net(x), net.head(3)(seq(x)))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"head": nn.Identity()}, "nn.Sequential models have no loss of their own: pass loss_fn="),
        ({"loss_fn": nn.MSELoss()}, "no heads for earlier depths of their own: pass head="),
        ({"loss_fn": nn.MSELoss(), "head": "shared"}, "cannot share the final head"),
        ({"loss_fn": nn.MSELoss(), "head": "bogus"}, "head must be one of"),
        ({"loss_fn": nn.MSELoss(), "head": [nn.Identity()] * 3}, r"one nn.Module per block \(4\), .*; got 3 item"),
        ({"loss_fn": nn.MSELoss(), "head": nn.Identity(), "blocks": 5}, r"blocks must be an integer in \[1, 4\]"),
        ({"loss_fn": nn.MSELoss(), "head": nn.Identity(), "blocks": 0}, r"blocks must be an integer in \[1, 4\]"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        recede.wrap(_seq(), **kwargs)


def test_an_unknown_model_names_its_class_and_the_families():
    with pytest.raises(
        ValueError, match=r"torch\.nn\.modules\.linear\.Linear into blocks; supported: .*nn\.Sequential"
    ):
        recede.wrap(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="needs an nn.Module, got str"):
        recede.wrap("resnet18")


def test_a_family_layout_gives_independent_shared_and_final_heads():
    class Toy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(4))
            self.out = nn.Linear(4, 3)

    made = []

    def independent(i: int) -> nn.Module:
        made.append(i)
        return nn.Linear(4, 3)

    @register_family("toy", lambda m: isinstance(m, Toy))
    def toy(model: Toy, width: int = 4) -> Layout:
        return Layout(list(model.layers), model.out, nn.CrossEntropyLoss(), independent, shareable=True)

    try:
        model = Toy()
        net = recede.wrap(model, blocks=2)
        assert made == [1] and net.head(2) is model.out and net.T == 2  # heads only where blocks end
        shared = recede.wrap(model, head="shared")
        assert shared.shared_head and shared.head(3) is model.out
        with pytest.raises(ValueError, match=r"toy models have no wrap option\(s\) \['depth'\]; they take \['width'\]"):
            recede.wrap(model, depth=3)
    finally:
        FAMILIES[:] = [f for f in FAMILIES if f.name != "toy"]
