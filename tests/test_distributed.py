"""Data-parallel training (recede.parallel.data_parallel): 2 CPU ranks with gloo on loopback.

The multi-process tests fork two processes (spawn where there is no fork) that join a gloo
group on 127.0.0.1; each writes what it computed to a file that the test compares with a
single process.  ``recede train --nproc 2`` is run once through its launcher (tests/test_launch.py: failures).
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

from recede.core.blocks import BlockNet
from recede.methods import build_method
from recede.parallel import data_parallel as distributed
from recede.parallel.data_parallel import DataParallel, RankFailure, buckets
from recede.runs.train import LossIncreaseDecay, batches, train

WORLD = 2
B = 5  # per-rank batch
# h = 1, a middle h, h = T = 4, LoCo, and BP-modified (Paper B eq. 5) of h = 1 and h = 2
METHODS = ["ff", "mpc:2", "bp", "loco-double:2", "bpm-ff", "bpm-mpc:2"]


def _net(seed: int) -> BlockNet:
    """T = 4 tanh blocks without BatchNorm, a linear head per depth, MSE (a batch mean)."""
    torch.manual_seed(seed)
    widths = [3, 6, 6, 6, 6]
    blocks = [nn.Sequential(nn.Linear(a, b), nn.Tanh()) for a, b in zip(widths, widths[1:])]
    heads = [nn.Linear(6, 2) for _ in blocks]
    return BlockNet(blocks, heads, nn.MSELoss()).double()


def _data(n: int, seed: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 3, generator=g, dtype=torch.float64), torch.randn(n, 2, generator=g, dtype=torch.float64))


def _method(net: BlockNet, spec: str):
    """The method ``spec``; BP-modified ones refresh from their own data every 2 steps, on
    B' = 8 samples in micro-batches of b' = 2 (the first step starts with a refresh), with Paper
    B's scalars, whose λ > 0 at the first refresh puts the offset in play."""
    return build_method(
        net,
        spec,
        refresh_data=TensorDataset(*_data(32, seed=11)),
        period=2,
        offset_samples=8,
        micro_batch=2,
        rule="paper",
    )


def _caller_refreshed(net: BlockNet, rank: int, world: int):
    """BP-modified MPC(h=2) refreshed by the caller: rank r of ``world`` passes every
    world-th of 4 micro-batches of 2 samples (B = 10, the global batch)."""
    from recede.bpm.estimator import BPModified

    method = BPModified(net, 2, period=100, offset_samples=8, micro_batch=2, batch_size=WORLD * B, rule="paper")
    x, y = _data(8, seed=13)
    micro_batches = list(zip(x.split(2), y.split(2)))
    wrapped = DataParallel(method, net) if world > 1 else method
    wrapped.refresh(micro_batches[rank::world])
    return wrapped


def _one_step(method, net: BlockNet, x: torch.Tensor, y: torch.Tensor) -> dict:
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    optimizer.zero_grad(set_to_none=True)
    loss = method.backward(x, y)
    optimizer.step()
    lam = getattr(method, "lam", None)
    drawn = len(list(method.draw(0))) if getattr(method, "data", None) is not None else None
    return {
        "loss": loss,
        "params": [p.detach().clone() for p in net.parameters()],
        "lam": None if lam is None else lam.clone(),
        "micro_batches": drawn,
    }


def _train(net: BlockNet, method, batch_size: int, rank: int, world: int) -> dict:
    x, y = _data(48)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    history = train(
        net,
        method,
        TensorDataset(x, y),
        optimizer,
        epochs=3,
        batch_size=batch_size,
        seed=3,
        lr_rule=LossIncreaseDecay(optimizer),
        progress=False,
        rank=rank,
        world_size=world,
    )
    return {"epoch_losses": [r.train_loss for r in history], "params": [p.detach().clone() for p in net.parameters()]}


# -- what each rank runs ---------------------------------------------------------------------


def _equivalence(ctx: distributed.Context) -> dict:
    """One step of every method on this rank's B samples, then a short sharded training run.
    Each rank starts from different weights: the wrapper must broadcast rank 0's."""
    x, y = _data(WORLD * B)
    shard = slice(ctx.rank * B, (ctx.rank + 1) * B)
    out = {}
    for spec in METHODS:
        net = _net(seed=100 + ctx.rank)
        out[spec] = _one_step(DataParallel(_method(net, spec), net), net, x[shard], y[shard])
    net = _net(seed=100 + ctx.rank)
    out["bpm caller refresh"] = _one_step(_caller_refreshed(net, ctx.rank, ctx.world_size), net, x[shard], y[shard])
    net = _net(seed=200 + ctx.rank)  # buckets of ≤ 210 bytes: some shared, some tensors alone
    method = DataParallel(_method(net, "bpm-mpc:2"), bucket_mb=2e-4)
    out["train"] = _train(net, method, B, ctx.rank, ctx.world_size)
    return out


def _peer_fails(ctx: distributed.Context, how: str) -> dict:
    """Rank 1 dies (``os._exit``) or hangs after one good step; rank 0 tries a second step."""
    net = _net(seed=0)
    method = DataParallel(build_method(net, "mpc:2"))
    x, y = _data(B)
    method.backward(x, y)
    if ctx.rank == 1:
        if how == "dies":
            os._exit(3)
        time.sleep(600)
    start = time.monotonic()
    try:
        method.backward(x, y)
    except RankFailure as err:
        return {"failure": str(err), "seconds": time.monotonic() - start}
    return {"failure": None}


def _worker(rank: int, port: int, out: Path, scenario: str, timeout: float) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    try:
        ctx = distributed.init_from_env("gloo", timeout=timeout)
        result = _equivalence(ctx) if scenario == "equivalence" else _peer_fails(ctx, scenario)
    except BaseException as err:  # reported by the test, which reads the file
        result = {"error": f"{type(err).__name__}: {err}\n{traceback.format_exc()}"}
    torch.save(result, out / f"rank{rank}.pt")
    if scenario == "equivalence":
        distributed.shutdown()


def _spawn(
    scenario: str, out: Path, timeout: float = 30.0, needed: tuple[int, ...] = (0, 1), wait: float = 60.0
) -> dict[int, dict]:
    """Run ``scenario`` on 2 spawned ranks; ranks in ``needed`` must finish within ``wait`` s.
    Any rank still running afterwards is killed.  Returns each rank's result that was written."""
    torch.optim.SGD([nn.Parameter(torch.zeros(1))])  # load its lazy imports once, before forking
    context = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    port = distributed.free_port()
    processes = [context.Process(target=_worker, args=(rank, port, out, scenario, timeout)) for rank in range(WORLD)]
    for p in processes:
        p.start()
    deadline = time.monotonic() + wait
    for rank in needed:
        processes[rank].join(max(0.0, deadline - time.monotonic()))
    hung = [rank for rank in needed if processes[rank].is_alive()]
    for p in processes:
        if p.is_alive():
            p.kill()
        p.join()
    assert not hung, f"rank(s) {hung} still running after {wait} s: a collective hung"
    results = {rank: torch.load(out / f"rank{rank}.pt") for rank in range(WORLD) if (out / f"rank{rank}.pt").exists()}
    for rank, result in results.items():
        assert "error" not in result, f"rank {rank} failed:\n{result['error']}"
    return results


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> dict[int, dict]:
    return _spawn("equivalence", tmp_path_factory.mktemp("ranks"))


def _max_difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    assert len(a) == len(b)
    return max(float((p - q).abs().max()) for p, q in zip(a, b))


# -- multi-process tests ---------------------------------------------------------------------


@pytest.mark.parametrize("spec", METHODS + ["bpm caller refresh"])
def test_two_ranks_of_batch_B_step_like_one_rank_of_batch_2B(two_ranks, spec):
    x, y = _data(WORLD * B)
    net = _net(seed=100)
    if spec == "bpm caller refresh":
        reference = _one_step(_caller_refreshed(net, rank=0, world=1), net, x, y)
    else:
        reference = _one_step(_method(net, spec), net, x, y)
    for rank in range(WORLD):
        assert _max_difference(two_ranks[rank][spec]["params"], reference["params"]) < 1e-6
        assert abs(two_ranks[rank][spec]["loss"] - reference["loss"]) < 1e-6
    if spec.startswith("bpm"):  # the refresh saw all ranks' samples: the same λ, not 0
        assert (reference["lam"] > 0).any()
        for rank in range(WORLD):
            assert torch.allclose(two_ranks[rank][spec]["lam"], reference["lam"], atol=1e-9)
    if spec.startswith("bpm-"):  # each rank drew half of the refresh's 4 micro-batches
        assert reference["micro_batches"] == 4
        assert [two_ranks[rank][spec]["micro_batches"] for rank in range(WORLD)] == [2, 2]


def test_ranks_hold_identical_parameters_after_several_steps(two_ranks):
    ranks = [two_ranks[rank]["train"] for rank in range(WORLD)]
    assert all(torch.equal(p, q) for p, q in zip(ranks[0]["params"], ranks[1]["params"]))
    assert ranks[0]["epoch_losses"] == ranks[1]["epoch_losses"]
    net = _net(seed=200)
    reference = _train(net, _method(net, "bpm-mpc:2"), WORLD * B, rank=0, world=1)
    assert _max_difference(ranks[0]["params"], reference["params"]) < 1e-6
    assert ranks[0]["epoch_losses"] == pytest.approx(reference["epoch_losses"], abs=1e-9)


def test_a_rank_that_dies_makes_the_other_fail_with_a_clear_error(tmp_path):
    results = _spawn("dies", tmp_path, timeout=30.0, needed=(0, 1))
    failure = results[0]["failure"]
    assert failure is not None and "rank 0 of 2" in failure and "another rank died" in failure


def test_a_rank_that_hangs_makes_the_other_fail_after_the_timeout(tmp_path):
    results = _spawn("hangs", tmp_path, timeout=2.0, needed=(0,), wait=40.0)
    assert results[0]["failure"] is not None and "rank 0 of 2" in results[0]["failure"]
    assert results[0]["seconds"] >= 1.5  # it waited for the timeout, not for ever


def test_recede_train_nproc_2_writes_one_report(tmp_path):
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "recede",
        "train",
        "--nproc",
        "2",
        "--model",
        "resmlp",
        "--model-opt",
        "depth=3",
        "--data",
        "trig",
        "--data-opt",
        "n=160",
        "--data-opt",
        "n_test=40",
        "--epochs",
        "1",
        "--batch-size",
        "20",
        "--method",
        "mpc:2",
        "--no-progress",
        "--out",
        str(out),
    ]
    env = os.environ | {"PYTHONPATH": str(Path(distributed.__file__).parents[1])}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("2 ranks × batch 20") == 1  # only rank 0 reports
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["history"]["MPC(h=2)"][0]["steps"] == 4  # 160 samples / (2 ranks × 20)


# -- single-process tests --------------------------------------------------------------------


@pytest.mark.parametrize("world", [2, 3])
def test_rank_shards_together_are_the_single_process_batches(world):
    dataset = TensorDataset(torch.arange(36))
    for epoch in range(2):
        single = [x.tolist() for (x,) in batches(dataset, world * 4, True, seed=5, epoch=epoch)]
        shards = [[x.tolist() for (x,) in batches(dataset, 4, True, 5, epoch, rank, world)] for rank in range(world)]
        assert all(len(s) == len(single) for s in shards)
        for i, batch in enumerate(single):
            assert sorted(sum((s[i] for s in shards), [])) == sorted(batch)
    odd = TensorDataset(torch.arange(37))  # padded with the first indices of the order
    order = [int(x) for (x,) in batches(odd, 1, True, seed=5)]
    shards = [[int(x) for (x,) in batches(odd, 1, True, 5, 0, rank, world)] for rank in range(world)]
    assert len({len(s) for s in shards}) == 1
    assert sorted(sum(shards, [])) == sorted(order + order[: len(shards[0]) * world - 37])


def test_buckets_keep_one_dtype_and_the_cap():
    tensors = [
        torch.zeros(10),
        torch.zeros(3, dtype=torch.float64),
        torch.zeros(20),
        torch.zeros(100),
        torch.zeros(5),
        torch.zeros(2, dtype=torch.float64),
    ]
    groups = buckets(tensors, cap_bytes=120)
    assert sorted(id(t) for g in groups for t in g) == sorted(id(t) for t in tensors)
    for g in groups:
        assert len({t.dtype for t in g}) == 1
        assert len(g) == 1 or sum(t.numel() * t.element_size() for t in g) <= 120
    # float32: 10+20 floats fill 120 bytes, 100 floats alone, then 5; float64: 3+2
    assert [[t.numel() for t in g] for g in groups] == [[10, 20], [100], [5], [3, 2]]


def test_rank_state_is_the_one_answer():
    """One object says which rank this is: the process group's, or rank 0 of 1 outside one;
    the Context that joining returns is such a state."""
    from recede.parallel.state import RankState, current

    assert current() == RankState(0, 1, 0) and current().is_main and not current().distributed
    assert str(RankState(2, 4, 0)) == "rank 2 of 4" and not RankState(2, 4, 0).is_main
    ctx = distributed.Context(1, 2, 1, torch.device("cpu"), "gloo")
    assert isinstance(ctx, RankState) and ctx.distributed and not ctx.is_main


def test_single_process_wrapper_is_the_method(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = distributed.init_from_env("gloo")
    assert (ctx.rank, ctx.world_size, ctx.backend, ctx.is_main) == (0, 1, None, True)
    assert distributed.is_main()
    x, y = _data(8)
    net = _net(seed=1)
    wrapped = DataParallel(build_method(net, "mpc:2"))
    loss = wrapped.backward(x, y)
    grads = [p.grad for p in net.parameters()]
    net.zero_grad(set_to_none=True)
    assert loss == build_method(net, "mpc:2").backward(x, y)
    for g, p in zip(grads, net.parameters()):
        assert (g is None and p.grad is None) or torch.equal(g, p.grad)
    assert wrapped.horizon == 2 and wrapped.last_losses
    stats = {"sum": torch.ones(3)}
    assert wrapped.sum_statistics(stats) is stats and torch.equal(stats["sum"], torch.ones(3))


def test_share_refreshes_hook_is_called():
    class WithRefreshes:
        def __init__(self, net):
            self.net, self.workers = net, None

        def share_refreshes(self, workers):
            self.workers = workers

    method = WithRefreshes(_net(seed=0))
    wrapped = DataParallel(method)
    assert method.workers is wrapped and wrapped.world_size == 1
    assert list(wrapped.share(iter([1, 2, 3]))) == [1, 2, 3]
    with pytest.raises(ValueError, match="tensors"):
        wrapped.sum_statistics({"count": 3})


def test_bad_input_is_named(monkeypatch):
    with pytest.raises(ValueError, match="module"):
        DataParallel(object())
    with pytest.raises(ValueError, match="bucket_mb"):
        DataParallel(build_method(_net(0), "bp"), bucket_mb=0)
    with pytest.raises(ValueError, match="timeout"):
        distributed.init_from_env(timeout=0)
    with pytest.raises(ValueError, match="rank"):
        batches(TensorDataset(torch.arange(4)), 2, rank=2, world_size=2)
    from recede.cli import build_parser

    for option in ("--nproc", "--dist-timeout"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["train", option, "0"])
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        distributed.init_from_env("gloo")
