"""The horizon rule (SPEC §2, Paper A eq. 9 and eq. 20), stated once in recede.core.chains,
checked against its definition, and the even split of T blocks into groups."""

from __future__ import annotations

import pytest
import torch

from recede.core.blocks import even_groups
from recede.core.chains import chains, exact, targets


def _cases(max_T: int = 7):
    for T in range(1, max_T + 1):
        for h in range(1, T + 1):
            for double in [False, True] if h >= 2 else [False]:
                yield T, h, double


def test_targets_are_the_definition():
    """Block t learns from L(x_{min(t+h, T)}), and with double also L(x_{min(t+h-1, T)})."""
    assert targets(0, 5, 2) == (2,)
    assert targets(4, 5, 2) == (5,)
    assert targets(1, 5, 2, double=True) == (2, 3)
    assert targets(4, 5, 2, double=True) == (5,)  # both capped at T: one depth
    assert targets(3, 5, 2, double=True) == (4, 5)
    with pytest.raises(ValueError, match="block 5"):
        targets(5, 5, 2)


def test_chains_follow_the_definition():
    """Each chain's weighted blocks are exactly those that learn from its depth; it reaches
    down to the lowest of them; every block learns from every depth the rule names and no
    other; a block's graph is released by the deepest chain that passes through it."""
    for T, h, double in _cases():
        steps = chains(T, h, double)
        assert [c.depth for c in steps] == sorted({c.depth for c in steps})
        for c in steps:
            want = {t for t in range(T) if c.depth in ({min(t + h, T)} | ({min(t + h - 1, T)} if double else set()))}
            assert c.weighted == want and c.lowest == min(want)
        for t in range(T):
            passing = [c.depth for c in steps if c.lowest <= t < c.depth]
            released = [c.depth for c in steps if t in c.released]
            assert released == [max(passing)]
            assert exact(t, T, h, double) == (targets(t, T, h, double) == (T,))


def test_chains_known_values():
    """Written out by hand: T = 4, h = 2 (and LoCo's double rule), h = T (one backward), h = 1."""
    assert [(c.depth, c.lowest, sorted(c.weighted), sorted(c.released)) for c in chains(4, 2)] == [
        (2, 0, [0], [0]),
        (3, 1, [1], [1]),
        (4, 2, [2, 3], [2, 3]),
    ]
    assert [(c.depth, c.lowest, sorted(c.weighted)) for c in chains(4, 2, double=True)] == [
        (1, 0, [0]),
        (2, 0, [0, 1]),
        (3, 1, [1, 2]),
        (4, 2, [2, 3]),
    ]
    assert [(c.depth, c.lowest, sorted(c.weighted)) for c in chains(4, 4)] == [(4, 0, [0, 1, 2, 3])]
    assert [(c.depth, c.lowest, sorted(c.weighted)) for c in chains(3, 1)] == [(1, 0, [0]), (2, 1, [1]), (3, 2, [2])]


@pytest.mark.parametrize("n, groups", [(7, 3), (6, 3), (3, 3), (10, 4), (1, 1), (2, 5)])
def test_even_groups_match_tensor_split(n, groups):
    want = [part.tolist() for part in torch.arange(n).tensor_split(groups)]
    assert [list(g) for g in even_groups(n, groups)] == want
    with pytest.raises(ValueError):
        even_groups(n, 0)
