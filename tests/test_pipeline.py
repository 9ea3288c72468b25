"""Pipeline-parallel receding-horizon training (recede.parallel.pipeline): gloo ranks on loopback.

The multi-process tests fork 2 or 3 processes onto a gloo group on 127.0.0.1 (as
tests/test_distributed.py does); each rank writes the gradients of its own stage to a file,
and the test compares them with single-process :class:`recede.MPC` / ``BPModified`` on the
whole batch, in float64.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import TensorDataset

from recede.bpm.estimator import BPModified
from recede.cli import main
from recede.core.blocks import BlockNet
from recede.core.engine import MPC, NonFiniteLossError
from recede.parallel import data_parallel as distributed
from recede.parallel.data_parallel import RankFailure
from recede.parallel.pipeline import Pipeline, Plan, balanced_sizes, even_sizes, simulate
from recede.parallel.pipeline.plan import chains
from recede.runs.checkpoint import read, restore, save
from recede.runs.train import LoopState

T, B, M = 6, 7, 3  # 7 samples in micro-batches of 3, 2, 2: the weights n_m / B matter
SIZES = {2: (2, 4), 3: (1, 2, 3)}  # uneven, and a one-block stage that chains pass through
# (horizon, double): h = 1, middle horizons, LoCo's double rule, h = T
HORIZONS = [(1, False), (2, False), (3, False), (2, True), (T, False)]
NETS = ("independent heads", "shared head", "tied head")


class Tanh(nn.Module):
    def __init__(self, width: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.linear, self.dropout = nn.Linear(width, width), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(torch.tanh(self.linear(x)))


def _net(kind: str = "independent heads", seed: int = 0, dropout: float = 0.0) -> BlockNet:
    """T tanh blocks of width 4, MSE to 2 outputs.  ``shared head``: one head for every depth
    (used on every rank); ``tied head``: the final head reuses block 0's weight (rank 0's)."""
    torch.manual_seed(seed)
    blocks = [Tanh(4, dropout) for _ in range(T)]
    if kind == "shared head":
        heads = nn.Linear(4, 2)
    else:
        heads = [nn.Linear(4, 2) for _ in range(T - 1)]
        if kind == "tied head":
            heads.append(_Tied(blocks[0].linear))
        else:
            heads.append(nn.Linear(4, 2))
    return BlockNet(blocks, heads, nn.MSELoss()).double()


class _Tied(nn.Module):
    """A head whose weight is a block's: its first two rows, read as a 4 → 2 map."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.linear.weight[:2].T


def _data(n: int = B, seed: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 4, generator=g, dtype=torch.float64), torch.randn(n, 2, generator=g, dtype=torch.float64))


def _grads(net: BlockNet) -> dict[int, torch.Tensor]:
    """Index (in ``net.parameters()``) → .grad, for the parameters that have one."""
    return {i: p.grad.clone() for i, p in enumerate(net.parameters()) if p.grad is not None}


def _untied_reference(h: int, double: bool, x: torch.Tensor, y: torch.Tensor) -> dict[int, torch.Tensor]:
    """SPEC §1 by definition for the tied net: MPC with the head's use of block 0's weight
    made a separate parameter, whose gradient is then added to block 0's."""
    net = _net("tied head")
    n_tied = len(list(net.parameters()))
    separate = nn.Parameter(net.blocks[0].linear.weight.detach().clone())
    net.heads[-1] = _Tied(nn.Linear(4, 4, bias=False).double())
    net.heads[-1].linear.weight = separate  # now the last parameter of net.parameters()
    MPC(net, h, double).backward(x, y)
    grads = {i: g for i, g in _grads(net).items() if i < n_tied}
    grads[0] = grads[0] + separate.grad  # parameter 0 is block 0's weight
    return grads


# -- what each rank runs ---------------------------------------------------------------------


def _exact(world: int) -> dict:
    """One step of every horizon and net; each rank reports its own parameters' .grad."""
    x, y = _data()
    out = {}
    for kind in NETS:
        for h, double in HORIZONS:
            net = _net(kind)
            pipe = Pipeline(net, h, M, sizes=SIZES[world], double=double)
            loss = pipe.backward(x if pipe.rank == 0 else None, y)
            out[kind, h, double] = {"grads": _grads(net), "loss": loss, "losses": pipe.last_losses}
    return out


def _bp_modified(world: int) -> dict:
    """BP-modified MPC(h=2) with Paper B's scalars (λ > 0 at the first refresh, so the offset is
    in play): a refresh from its own data (B' = 8, b' = 2), then one step."""
    x, y = _data()
    net = _net()
    pipe = Pipeline(net, 2, M, sizes=SIZES[world])
    method = pipe.bp_modified(
        period=3,
        offset_samples=8,
        micro_batch=2,
        data=TensorDataset(*_data(16, seed=11)),
        batch_size=B,
        rule="paper",
    )
    loss = method.backward(x if pipe.rank == 0 else None, y)
    return {"grads": _grads(net), "loss": loss, "a": method.a, "lam": method.lam, "modified": method.modified}


def _resume(folder: Path) -> dict:
    """4 steps of BP-modified MPC(h=2) with dropout and Adam, straight and as 2 + checkpoint + 2."""
    batches = [_data(seed=20 + i) for i in range(4)]
    rank = torch.distributed.get_rank()

    def run(steps: range, load: Path | None = None, store: Path | None = None) -> list[torch.Tensor]:
        torch.manual_seed(1234 + rank)
        net = _net(dropout=0.2)
        pipe = Pipeline(net, 2, M, sizes=(2, 4))
        method = pipe.bp_modified(
            period=2, offset_samples=4, micro_batch=2, data=TensorDataset(*_data(16, seed=11)), batch_size=B
        )
        opt = torch.optim.Adam(pipe.parameters(), lr=0.01)
        loop = LoopState()
        if load is not None:
            loop = restore(read(load), net=pipe.stage, optimizer=opt, method=method)
        for i in steps:
            opt.zero_grad(set_to_none=True)
            method.backward(*batches[i])
            opt.step()
            loop.global_step += 1
        if store is not None:
            save(store, net=pipe.stage, optimizer=opt, loop=loop, method=method)
        return [p.detach().clone() for p in pipe.parameters()]

    straight = run(range(4))
    path = folder / f"stage{rank}.pt"
    run(range(2), store=path)
    torch.manual_seed(999)  # the checkpoint's RNG state must win over this
    resumed = run(range(2, 4), load=path)
    return {"straight": straight, "resumed": resumed}


def _peer_fails(how: str) -> dict:
    """Rank 1 dies (``os._exit``) or hangs after one good step; rank 0 tries a second step."""
    x, y = _data()
    pipe = Pipeline(_net(), 1, M, sizes=(2, 4))
    pipe.backward(x, y)
    if pipe.rank == 1:
        if how == "dies":
            os._exit(3)
        time.sleep(600)
    start = time.monotonic()
    try:
        pipe.backward(x, y)
    except RankFailure as err:
        return {"failure": str(err), "seconds": time.monotonic() - start}
    return {"failure": None}


def _non_finite() -> dict:
    """A NaN input on rank 0 reaches rank 1's losses: both ranks raise, no .grad written."""
    x, y = _data()
    net = _net()
    pipe = Pipeline(net, 2, M, sizes=(2, 4))
    try:
        pipe.backward(torch.full_like(x, float("nan")), y)
    except NonFiniteLossError as err:
        return {"message": str(err), "grads": _grads(net)}
    return {"message": None}


def _worker(rank: int, world: int, port: int, out: Path, scenario: str, timeout: float) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    try:
        distributed.init_from_env("gloo", timeout=timeout)
        if scenario == "all":
            result = {"exact": _exact(world), "bpm": _bp_modified(world)}
            if world == 2:  # last: recede train's pipeline ends with leaving the group
                result |= {
                    "resume": _resume(out),
                    "non-finite": _non_finite(),
                    "cli": (main([*TRAIN, "--pipeline", "2", "--out", str(out / "cli")]), out / "cli"),
                }
        else:
            result = _peer_fails(scenario)
    except BaseException as err:  # reported by the test, which reads the file
        result = {"error": f"{type(err).__name__}: {err}\n{traceback.format_exc()}"}
    torch.save(result, out / f"rank{rank}.pt")
    if scenario == "all":
        distributed.shutdown()


def _spawn(
    scenario: str,
    world: int,
    out: Path,
    timeout: float = 30.0,
    needed: tuple[int, ...] | None = None,
    wait: float = 90.0,
) -> dict[int, dict]:
    """Run ``scenario`` on ``world`` forked ranks; ranks in ``needed`` must finish within
    ``wait`` s.  Any rank still running afterwards is killed.  Returns the results written."""
    torch.optim.Adam([nn.Parameter(torch.zeros(1))])  # load lazy imports once, before forking
    context = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    port = distributed.free_port()
    processes = [
        context.Process(target=_worker, args=(rank, world, port, out, scenario, timeout)) for rank in range(world)
    ]
    for p in processes:
        p.start()
    deadline = time.monotonic() + wait
    for rank in needed if needed is not None else range(world):
        processes[rank].join(max(0.0, deadline - time.monotonic()))
    hung = [rank for rank in range(world) if processes[rank].is_alive() and (needed is None or rank in needed)]
    for p in processes:
        if p.is_alive():
            p.kill()
        p.join()
    assert not hung, f"rank(s) {hung} still running after {wait} s: the pipeline hung"
    results = {
        rank: torch.load(out / f"rank{rank}.pt", weights_only=False)
        for rank in range(world)
        if (out / f"rank{rank}.pt").exists()
    }
    for rank, result in results.items():
        assert "error" not in result, f"rank {rank} failed:\n{result['error']}"
    return results


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> dict[int, dict[int, dict]]:
    """world → rank → what the rank computed in the "all" scenario."""
    return {world: _spawn("all", world, tmp_path_factory.mktemp(f"world{world}")) for world in (2, 3)}


def _merged(results: dict[int, dict], key) -> dict[int, torch.Tensor]:
    """The ranks' gradients together; a parameter on several ranks must agree there."""
    merged: dict[int, torch.Tensor] = {}
    for result in results.values():
        for i, g in key(result).items():
            if i in merged:
                assert torch.equal(merged[i], g), f"parameter {i} differs between ranks"
            merged[i] = g
    return merged


def _assert_close(got: dict[int, torch.Tensor], want: dict[int, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for i in want:
        assert float((got[i] - want[i]).abs().max()) < 1e-9, f"parameter {i}"


# -- multi-process tests ---------------------------------------------------------------------


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("kind", NETS)
@pytest.mark.parametrize("h, double", HORIZONS)
def test_stages_fill_grad_like_mpc_on_the_whole_batch(ranks, world, kind, h, double):
    x, y = _data()
    if kind == "tied head":
        want = _untied_reference(h, double, x, y)
    else:
        net = _net(kind)
        reference = MPC(net, h, double)
        loss = reference.backward(x, y)
        want = _grads(net)
    got = _merged(ranks[world], lambda r: r["exact"][kind, h, double]["grads"])
    _assert_close(got, want)
    for rank in range(world):
        result = ranks[world][rank]["exact"][kind, h, double]
        if kind != "tied head":
            assert result["loss"] == pytest.approx(loss, abs=1e-12)
            assert result["losses"] == pytest.approx(reference.last_losses, abs=1e-12)


@pytest.mark.parametrize("world", [2, 3])
def test_bp_modified_across_stages_is_single_process_bp_modified(ranks, world):
    x, y = _data()
    net = _net()
    method = BPModified(
        net,
        2,
        period=3,
        offset_samples=8,
        micro_batch=2,
        data=TensorDataset(*_data(16, seed=11)),
        batch_size=B,
        rule="paper",
    )
    method.backward(x, y)
    assert (method.lam[: T - 2] > 0).any()  # the offset is in play
    _assert_close(_merged(ranks[world], lambda r: r["bpm"]["grads"]), _grads(net))
    for result in ranks[world].values():
        for t in result["bpm"]["modified"]:
            assert abs(float(result["bpm"]["a"][t] - method.a[t])) < 1e-9
            assert abs(float(result["bpm"]["lam"][t] - method.lam[t])) < 1e-9
    assert sorted(t for r in ranks[world].values() for t in r["bpm"]["modified"]) == method.modified


def test_resume_from_per_stage_checkpoints_is_bitwise(ranks):
    for result in ranks[2].values():
        run = result["resume"]
        assert len(run["straight"]) == len(run["resumed"]) > 0
        assert all(torch.equal(p, q) for p, q in zip(run["straight"], run["resumed"]))


def test_non_finite_loss_raises_on_every_rank_and_writes_nothing(ranks):
    for result in ranks[2].values():
        assert "non-finite loss" in result["non-finite"]["message"]
        assert result["non-finite"]["grads"] == {}


def test_a_stage_that_dies_makes_the_other_raise_rank_failure(tmp_path):
    results = _spawn("dies", 2, tmp_path, timeout=30.0, needed=(0, 1))
    failure = results[0]["failure"]
    assert failure is not None and failure.startswith("rank 0 of 2: ") and "died" in failure
    assert "\n" not in failure


def test_a_stage_that_hangs_makes_the_other_raise_after_the_timeout(tmp_path):
    results = _spawn("hangs", 2, tmp_path, timeout=2.0, needed=(0,), wait=40.0)
    assert results[0]["failure"] is not None and "rank 0 of 2" in results[0]["failure"]
    assert 1.5 <= results[0]["seconds"] < 30


# -- single-process tests --------------------------------------------------------------------


@pytest.mark.parametrize("h, double", HORIZONS)
def test_one_stage_with_micro_batches_is_mpc(h, double):
    x, y = _data()
    net = _net("shared head")
    pipe = Pipeline(net, h, 4, double=double)
    loss = pipe.backward(x, y)
    got = _grads(net)
    net = _net("shared head")
    want_loss = MPC(net, h, double).backward(x, y)
    _assert_close(got, _grads(net))
    assert loss == pytest.approx(want_loss, abs=1e-12)
    assert pipe.last_timing.step_s >= pipe.last_timing.busy_s > 0


def test_chains_are_the_horizon_gradient_of_every_block():
    """Each block takes its weight gradient from the depths Paper A eq. 9 (and eq. 20) name."""
    for h in range(1, 7):
        for double in [False, True] if h >= 2 else [False]:
            owed: dict[int, list[int]] = {}
            for c in chains(6, h, double):
                for j in c.weighted:
                    owed.setdefault(j, []).append(c.depth)
                assert c.lowest == min(c.weighted)
            for t in range(6):
                depths = {min(t + h, 6)} | ({min(t + h - 1, 6)} if double else set())
                assert sorted(owed[t]) == sorted(depths)


@pytest.mark.parametrize("sizes", [(3, 3), (1, 2, 3), (2, 1, 1, 2), (1, 1, 1, 1, 1, 1)])
@pytest.mark.parametrize("h", [1, 2, 3, 4, 6])
def test_schedule_is_deadlock_free(sizes, h):
    """Every receive comes after its send in the global order (simulate raises KeyError
    otherwise); each channel carries its micro-batches in order; and the receive of the
    activations of m-2, which a rank awaits before sending those of m, comes earlier."""
    plan, micro = Plan(sizes, h), 5
    sim = simulate(plan, micro)
    assert sim.makespan > 0 and 0 <= sim.bubble < 1
    ops = plan.schedule(micro)
    position = {(op.kind, op.rank, op.m): i for i, op in enumerate(ops)}
    for r in range(plan.stages):
        for kind in "FB":
            assert [op.m for op in plan.ops(r, micro) if op.kind == kind] == (
                list(range(micro)) if kind == "F" or plan.up(r) else []
            )
        if r < plan.stages - 1:
            for m in range(2, micro):
                assert position["F", r + 1, m - 2] < position["F", r, m]
    if h == 1:
        assert all(not plan.up(r) for r in range(plan.stages))  # no backward message at all
        assert sim.peak_graphs == [1] * plan.stages


def test_balanced_sizes_minimise_the_slowest_stage():
    import itertools

    times = [0.3, 1.0, 0.2, 0.2, 2.0, 0.1, 0.4]
    for stages in range(1, 5):
        sizes = balanced_sizes(times, stages)
        assert sum(sizes) == len(times) and len(sizes) == stages and min(sizes) >= 1

        def worst(cuts):
            bounds = [0, *cuts, len(times)]
            return max(sum(times[a:b]) for a, b in zip(bounds, bounds[1:]))

        best = min(worst(c) for c in itertools.combinations(range(1, len(times)), stages - 1))
        got = worst(list(itertools.accumulate(sizes))[:-1])
        assert got == pytest.approx(best)
    assert even_sizes(7, 3) == [3, 2, 2]


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="micro_batches"):
        Pipeline(_net(), 1, 0)
    with pytest.raises(ValueError, match="horizon"):
        Pipeline(_net(), 7, 2)
    with pytest.raises(ValueError, match="sum to T"):
        Pipeline(_net(), 1, 2, sizes=(2, 2))
    with pytest.raises(ValueError, match="stage sizes"):
        Plan((3, 0, 3), 1)
    scaler = torch.amp.GradScaler("cpu")
    assert scaler.is_enabled()
    with pytest.raises(ValueError, match="GradScaler"):
        Pipeline(_net(), 1, 2).backward(*_data(), scaler=scaler)
    with pytest.raises(ValueError, match="stages"):
        balanced_sizes([1.0, 2.0], 3)


# -- the command line ------------------------------------------------------------------------

TRAIN = [
    "train",
    "--model",
    "resmlp",
    "--model-opt",
    "depth=4",
    "--data",
    "trig",
    "--data-opt",
    "n=160",
    "--data-opt",
    "n_test=40",
    "--epochs",
    "2",
    "--batch-size",
    "20",
    "--method",
    "mpc:2",
    "--method",
    "bpm-ff",
    "--no-progress",
]


def _same_training(pipe: Path, one: Path) -> None:
    """Two stages reach the epoch losses of one process (float32)."""
    pipe, one = (json.loads((d / "metrics.json").read_text())["history"] for d in (pipe, one))
    assert sorted(pipe) == sorted(one) == ["FF+BPM", "MPC(h=2)"]
    for label in one:
        assert len(pipe[label]) == len(one[label]) == 2
        for a, b in zip(pipe[label], one[label]):
            assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
            assert a["test"]["loss"] == pytest.approx(b["test"]["loss"], abs=1e-5)


def test_recede_train_pipeline_trains_like_one_process(ranks, tmp_path):
    """``recede train --pipeline 2`` as the ranks ran it (in the group the tests forked)."""
    (code, pipe), (other, _) = ranks[2][0]["cli"], ranks[2][1]["cli"]
    assert code == other == 0
    assert main([*TRAIN, "--out", str(tmp_path)]) == 0
    _same_training(pipe, tmp_path)
    names = sorted(p.name for p in (pipe / "checkpoints").iterdir())
    assert names == ["ff-bpm.stage0.pt", "ff-bpm.stage1.pt", "mpc-h-2.stage0.pt", "mpc-h-2.stage1.pt"]


@pytest.mark.slow
def test_recede_train_pipeline_2_launches_torchrun(tmp_path):
    env = os.environ | {"PYTHONPATH": str(Path(distributed.__file__).parents[1])}
    command = [sys.executable, "-m", "recede", *TRAIN, "--pipeline", "2", "--out", str(tmp_path / "pipe")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert main([*TRAIN, "--out", str(tmp_path / "one")]) == 0
    _same_training(tmp_path / "pipe", tmp_path / "one")


@pytest.mark.parametrize(
    "extra, message", [(["--method", "loco:2"], "--pipeline trains"), (["--nproc", "2"], "cannot be combined")]
)
def test_recede_train_pipeline_names_what_it_cannot_do(tmp_path, capsys, extra, message):
    assert main([*TRAIN, "--pipeline", "2", *extra, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
