"""recede.integrations.accelerate: engine.backward in place of accelerator.backward."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

accelerate = pytest.importorskip("accelerate")
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from conftest import SRC

import recede
from recede.core.engine import write_grads
from recede.integrations.accelerate import AcceleratedEngine
from recede.parallel.data_parallel import free_port


def fresh_accelerator(**options) -> Accelerator:
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    return Accelerator(cpu=True, **options)


def mlp(seed: int = 0, dtype=torch.float32) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(*(nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(4)), nn.Linear(8, 3)).to(dtype)


def wrapped(model: nn.Sequential) -> recede.BlockNet:
    """The MLP as 4 blocks; new linear heads at depths 1-3, the model's own classifier at 4."""
    torch.manual_seed(5)
    heads = [nn.Linear(8, 3).to(model[-1].weight.dtype) for _ in range(3)] + [model[-1]]
    return recede.BlockNet(list(model)[:-1], heads, nn.functional.cross_entropy)


def loader(dtype=torch.float32, batch: int = 4) -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(
        torch.randn(24, 8, generator=g, dtype=dtype), torch.randint(0, 3, (24,), generator=g)
    )
    return torch.utils.data.DataLoader(data, batch_size=batch)


def train(
    horizon: int | None, accumulate: int = 1, precision: str = "no", stock: bool = False
) -> tuple[list, nn.Module]:
    acc = fresh_accelerator(gradient_accumulation_steps=accumulate, mixed_precision=precision)
    model = mlp()
    net = wrapped(model)
    target = model if stock else net
    opt = torch.optim.SGD(target.parameters(), lr=0.1, momentum=0.9)
    target, opt, data = acc.prepare(target, opt, loader())
    engine = None if stock else AcceleratedEngine(acc, target, horizon)
    losses = []
    for x, y in data:
        with acc.accumulate(target):
            if stock:
                loss = nn.functional.cross_entropy(target(x), y)
                acc.backward(loss)
                losses.append(float(loss))
            else:
                losses.append(engine.backward(x, y))
            acc.clip_grad_norm_(target.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
    return losses, model


@pytest.mark.parametrize("accumulate", [1, 3])
def test_horizon_T_is_the_stock_accelerate_loop_bitwise(accumulate: int) -> None:
    (ours, a), (stock, b) = train(None, accumulate), train(None, accumulate, stock=True)
    assert ours == stock
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_bf16_at_horizon_T_matches_the_stock_loop() -> None:
    (ours, a), (stock, b) = train(None, 2, "bf16"), train(None, 2, "bf16", stock=True)
    assert ours == pytest.approx(stock, rel=1e-6)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_a_short_horizon_trains_differently_and_refusals() -> None:
    (bp, a), (h1, b) = train(None), train(1)
    assert bp[0] == h1[0] and not all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    acc = fresh_accelerator()
    with pytest.raises(ValueError, match="needs recede.wrap"):
        AcceleratedEngine(acc, acc.prepare(mlp()), 2)

    class Fake:
        distributed_type = accelerate.DistributedType.DEEPSPEED

    with pytest.raises(ValueError, match="DEEPSPEED is not supported"):
        AcceleratedEngine(Fake(), wrapped(mlp()), 2)


SCRIPT = textwrap.dedent("""
    import sys, torch
    from torch import nn
    from accelerate import Accelerator
    import recede
    from recede.integrations.accelerate import AcceleratedEngine
    sys.path.insert(0, sys.argv[2])
    from test_integrations_accelerate import mlp, loader, wrapped
    acc = Accelerator(cpu=True, gradient_accumulation_steps=2)
    assert acc.num_processes == 2, acc.num_processes
    net = wrapped(mlp(dtype=torch.float64))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net, opt, data = acc.prepare(net, opt, loader(torch.float64, batch=2))
    engine = AcceleratedEngine(acc, net, horizon=2)
    for x, y in data:
        with acc.accumulate(net):
            engine.backward(x, y)
            opt.step(); opt.zero_grad()
    if acc.is_main_process:
        torch.save(acc.unwrap_model(net).state_dict(), sys.argv[1])
""")


@pytest.mark.slow
def test_two_cpu_processes_step_as_one_process_of_twice_the_batch(tmp_path: Path) -> None:
    """2 processes (gloo) of batch 2 with 2 accumulated micro-batches = one process of batch 4, accumulating 2."""
    script = tmp_path / "two.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    port = str(free_port())
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            port,
            str(script),
            str(tmp_path / "net.pt"),
            str(Path(__file__).parent),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    two = torch.load(tmp_path / "net.pt")
    # one process, plain engine: batch 4 (the two processes' batches together), accumulating 2
    net = wrapped(mlp(dtype=torch.float64))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    engine = recede.MPC(net, 2)
    for i, (x, y) in enumerate(loader(torch.float64, batch=4)):
        step = engine.gradients(x, y)
        write_grads({p: g / 2 for p, g in step.total().items()})  # the mean over 2 micro-batches
        if i % 2 == 1:
            opt.step()
            opt.zero_grad()
    for k, v in net.state_dict().items():
        torch.testing.assert_close(two[k], v, rtol=0, atol=1e-12)
