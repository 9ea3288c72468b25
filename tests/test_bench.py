"""recede.bench's round-robin timer: medians per run, with the clock it is given."""

from __future__ import annotations

import itertools

from recede.bench import interleaved_medians


def test_medians_come_from_the_given_clock_after_warmup():
    ticks = itertools.count()
    calls = []
    runs = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    medians = interleaved_medians(runs, repeats=3, warmup=2, clock=lambda: float(next(ticks)))
    assert calls == ["a", "b"] * 5  # interleaved rounds, warm-up included
    assert medians == {"a": 1.0, "b": 1.0}  # each call spans one tick of the fake clock
