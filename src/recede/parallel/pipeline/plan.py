"""What a receding-horizon pipeline computes where and when, without running anything.

A horizon-h step (SPEC §2, Paper A eq. 9) is a set of *chains*: the cotangent of depth k,
c = ∂L(x_k)/∂x_k, is carried back through blocks k-1 … lowest+1 with input-only VJPs and
gives weight gradients at the blocks ``weighted`` (block k-h; with LoCo's double rule, Paper A
eq. 20, also k-h+1); the chain of depth T is the final sweep, which gives every block of
[T-h, T) its exact gradient.  With the T blocks split into stages of consecutive blocks on
ranks 0..S-1 (rank r holds blocks [a_r, b_r)), a chain crosses the boundary x_b between two
stages exactly when lowest < b < k (SPEC §8): h = 1 has no crossing chain.

Per micro-batch m, rank r runs two operations:

* ``F(m)``: receive x_{a_r} (rank 0: the input), run its blocks, send x_{b_r} on as soon as it
  exists, and run every chain whose depth lies in (a_r, b_r], as far down as rank r reaches;
* ``B(m)`` (only where chains cross b_r): receive the cotangents at x_{b_r} of the chains
  that cross it, stacked in one message, and carry them through rank r's blocks.

The cotangents at x_{a_r} of the chains that go on below a_r leave in one message per
micro-batch, at the end of F(m) when all of them start on rank r, else at the end of B(m).

:func:`schedule` orders these operations in *ticks*: F_r(m) in tick m + r (the fill), B_r(m)
in the tick where its message is sent, tick m + r + 1 + δ_{r+1}, where δ_r = 0 if rank r
sends its cotangents in F and δ_{r+1} + 1 if it must wait for rank r+1's.  Within a tick the
F operations come first, then the B operations from the last rank down.  Every rank executes
its operations in this global order and every message is sent before (in that order) it is
received, so with asynchronous sends and blocking receives no rank can wait for ever: the
rank that the earliest pending receive waits for is never itself waiting.  Each direction of
a link carries its micro-batches in order.  :func:`simulate` replays a
schedule with SPEC §2's unit costs (forward = input-VJP = weight gradient = 1 per block) to
give the bubble fraction and the live activations per rank.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from recede.core.blocks import even_groups
from recede.core.chains import Chain, chains

__all__ = [
    "Chain",
    "Op",
    "Plan",
    "Simulation",
    "balanced_sizes",
    "bp_bubble",
    "chains",
    "diagram",
    "even_sizes",
    "simulate",
]


def even_sizes(T: int, stages: int) -> list[int]:
    """T blocks in ``stages`` stages as equal as ``torch.tensor_split`` makes them."""
    return [len(group) for group in even_groups(T, stages)]


def balanced_sizes(times: list[float], stages: int) -> list[int]:
    """Stage sizes that split blocks of forward times ``times`` into ``stages`` consecutive
    groups with the smallest largest group time (exact, by dynamic programming)."""
    T = len(times)
    if not 1 <= stages <= T:
        raise ValueError(f"cannot split {T} blocks into {stages} stages; need 1 <= stages <= T")
    prefix = [0.0]
    for t in times:
        prefix.append(prefix[-1] + t)
    # best[s][j]: the smallest largest group time of the first j blocks in s groups
    inf = float("inf")
    best = [[inf] * (T + 1) for _ in range(stages + 1)]
    cut = [[0] * (T + 1) for _ in range(stages + 1)]
    best[0][0] = 0.0
    for s in range(1, stages + 1):
        for j in range(s, T - (stages - s) + 1):
            for i in range(s - 1, j):
                cost = max(best[s - 1][i], prefix[j] - prefix[i])
                if cost < best[s][j]:
                    best[s][j], cut[s][j] = cost, i
    sizes, j = [], T
    for s in range(stages, 0, -1):
        i = cut[s][j]
        sizes.append(j - i)
        j = i
    return sizes[::-1]


@dataclass(frozen=True)
class Op:
    """One operation of a rank: ``kind`` "F" or "B" on micro-batch ``m``, in tick ``tick``."""

    kind: str
    rank: int
    m: int
    tick: int


@dataclass(frozen=True)
class Plan:
    """T blocks in stages of ``sizes`` blocks, trained with ``horizon`` (and ``double``)."""

    sizes: tuple[int, ...]
    horizon: int
    double: bool = False
    all_chains: list[Chain] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.sizes or any(not isinstance(s, int) or s < 1 for s in self.sizes):
            raise ValueError(f"stage sizes must be positive integers, got {list(self.sizes)}")
        if not 1 <= self.horizon <= self.T:
            raise ValueError(f"horizon must be in [1, {self.T}], got {self.horizon}")
        if self.double and self.horizon < 2:
            raise ValueError("double=True needs horizon >= 2")
        object.__setattr__(self, "all_chains", chains(self.T, self.horizon, self.double))

    @property
    def T(self) -> int:
        return sum(self.sizes)

    @property
    def stages(self) -> int:
        return len(self.sizes)

    def bounds(self, r: int) -> tuple[int, int]:
        """Rank r holds blocks [a_r, b_r)."""
        a = sum(self.sizes[:r])
        return a, a + self.sizes[r]

    def owner(self, block: int) -> int:
        """The rank that holds ``block``."""
        return next(r for r in range(self.stages) if block < self.bounds(r)[1])

    def crossing(self, boundary: int) -> list[Chain]:
        """The chains whose cotangent passes x_boundary, by increasing depth."""
        return [c for c in self.all_chains if c.lowest < boundary < c.depth]

    def local(self, r: int) -> list[Chain]:
        """The chains that start on rank r (depth in (a_r, b_r])."""
        a, b = self.bounds(r)
        return [c for c in self.all_chains if a < c.depth <= b]

    def up(self, r: int) -> list[Chain]:
        """The chains rank r receives from rank r+1 (they cross b_r)."""
        return self.crossing(self.bounds(r)[1]) if r < self.stages - 1 else []

    def down(self, r: int) -> list[Chain]:
        """The chains rank r sends to rank r-1 (they cross a_r), in message order."""
        return self.crossing(self.bounds(r)[0]) if r > 0 else []

    def sends_in_forward(self, r: int) -> bool:
        """True when every chain rank r sends down starts on rank r (none passes through)."""
        return not any(c.depth > self.bounds(r)[1] for c in self.down(r))

    @cached_property
    def delays(self) -> list[int]:
        """δ_r: ticks between F_r(m) and the tick in which rank r sends m's cotangents down."""
        delays = [0] * self.stages
        for r in range(self.stages - 2, -1, -1):
            delays[r] = 0 if self.sends_in_forward(r) else delays[r + 1] + 1
        return delays

    def last_user(self) -> dict[int, int]:
        """For each block, the depth of the last chain that needs its graph (then it is freed)."""
        return {j: c.depth for c in self.all_chains for j in c.released}

    def schedule(self, micro_batches: int) -> list[Op]:
        """Every rank's operations in the global order (see the module docstring)."""
        ops = []
        for r in range(self.stages):
            for m in range(micro_batches):
                ops.append(Op("F", r, m, m + r))
                if self.up(r):
                    ops.append(Op("B", r, m, m + r + 1 + self.delays[r + 1]))
        return sorted(ops, key=lambda o: (o.tick, o.kind == "B", o.rank if o.kind == "F" else -o.rank))

    def ops(self, r: int, micro_batches: int) -> list[Op]:
        """Rank r's operations, in the order it runs them."""
        return [o for o in self.schedule(micro_batches) if o.rank == r]


@dataclass
class Simulation:
    """A schedule replayed with unit costs: per rank, (start, end, op) of each operation."""

    timeline: dict[int, list[tuple[float, float, Op]]]
    makespan: float
    busy: list[float]
    peak_graphs: list[int]

    @property
    def bubble(self) -> float:
        """The idle fraction of ranks × makespan."""
        return 1 - sum(self.busy) / (len(self.busy) * self.makespan)


def _costs(plan: Plan, r: int) -> tuple[float, float, float]:
    """Unit costs (SPEC §2: forward, input-VJP and weight gradient = 1 per block) of rank r's
    forward, of its local chains, and of the chains it receives, per micro-batch."""
    a, b = plan.bounds(r)

    def work(chain: Chain, top: int) -> int:
        blocks = range(max(chain.lowest, a), min(top, b))
        return sum((j > chain.lowest) + (j in chain.weighted) for j in blocks)

    return (b - a, sum(work(c, c.depth) for c in plan.local(r)), sum(work(c, b) for c in plan.up(r)))


def simulate(plan: Plan, micro_batches: int) -> Simulation:
    """Run the schedule with unit costs and instant messages (isend, blocking receive).

    ``peak_graphs``: per rank, the most block graphs of one micro-batch alive at once (a
    graph lives from its block's forward until its last chain has passed).
    """
    S, M = plan.stages, micro_batches
    free = [0.0] * S
    arrive: dict[tuple[str, int, int], float] = {}  # (kind, receiving rank, m) -> time
    timeline: dict[int, list] = {r: [] for r in range(S)}
    last = plan.last_user()
    live = [0] * S
    peak = [0] * S
    for op in plan.schedule(M):
        r, m = op.rank, op.m
        fwd, local, up = _costs(plan, r)
        a, b = plan.bounds(r)
        if op.kind == "F":
            start = max(free[r], arrive.pop(("act", r, m), 0.0) if r > 0 else 0.0)
            if r < S - 1:
                arrive[("act", r + 1, m)] = start + fwd
            end = start + fwd + local
            for t in range(a, b):  # block t's graph is made, then chain t+1 frees its last users
                live[r] += 1
                peak[r] = max(peak[r], live[r])
                live[r] -= sum(1 for j in range(a, b) if last[j] == t + 1)
        else:
            start = max(free[r], arrive.pop(("cot", r, m)))
            end = start + up
            live[r] -= sum(1 for j in range(a, b) if last[j] > b)
        if r > 0 and plan.down(r) and (op.kind == "F") == plan.sends_in_forward(r):
            arrive[("cot", r - 1, m)] = end
        free[r] = end
        timeline[r].append((start, end, op))
    makespan = max(free)
    busy = [sum(e - s for s, e, _ in timeline[r]) for r in range(S)]
    return Simulation(timeline, makespan, busy, peak)


def bp_bubble(stages: int, micro_batches: int) -> float:
    """GPipe's and 1F1B's bubble fraction on equal stages, (S-1)/(M+S-1)."""
    return (stages - 1) / (micro_batches + stages - 1)


def diagram(sim: Simulation, scale: float = 1.0) -> str:
    """The timeline as text: one row per rank, F/B operations labelled with their micro-batch
    (``F3`` spans the forward and local chains of micro-batch 3), ``.`` for idle time."""
    width = int(round(sim.makespan * scale))
    rows = []
    for r, ops in sim.timeline.items():
        row = ["."] * width
        for start, end, op in ops:
            s, e = int(round(start * scale)), int(round(end * scale))
            label = f"{op.kind}{op.m}".ljust(max(e - s, 1), op.kind.lower())[: max(e - s, 1)]
            row[s : s + len(label)] = list(label)
        rows.append(f"rank {r} |" + "".join(row[:width]) + "|")
    return "\n".join(rows)
