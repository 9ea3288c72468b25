"""The saved-tensor meter, and the engine's O(h) memory: at most (h+1)/T of BP's plus a head."""

from __future__ import annotations

import pytest
import torch
from conftest import resmlp_independent
from torch import nn

from recede import MPC
from recede.measure.memory import SavedTensorMeter, measure

pytestmark = pytest.mark.usefixtures("float64")


def test_meter_counts_saved_storages_once_and_follows_their_release():
    a = torch.randn(100, requires_grad=True)
    b = torch.randn(100, requires_grad=True)
    with SavedTensorMeter() as meter:
        prod = a * b  # saves a and b
        again = prod * a  # saves prod and a again (a counted once)
        assert meter.live_bytes == 3 * 100 * 8
        again.sum().backward()  # frees the graph: nothing stays saved
    assert meter.peak_bytes == 3 * 100 * 8
    assert meter.live_bytes == 0


def test_meter_excludes_parameters():
    layer = nn.Linear(50, 50)
    x = torch.randn(20, 50, requires_grad=True)
    _, report = measure(lambda: layer(x).sum().backward(), module=layer)
    assert report.saved_peak_bytes == x.untyped_storage().nbytes()
    assert report.cuda_peak_bytes is None


def test_views_of_one_storage_count_once():
    base = torch.randn(10, 10, requires_grad=True)
    x = base * 1.0
    with SavedTensorMeter() as meter:
        y = x[:5] * x[5:]  # two views of x's storage are saved
    assert meter.peak_bytes == x.untyped_storage().nbytes()
    del y


def saved_bytes(net, x, y, h=None) -> int:
    net.zero_grad(set_to_none=True)
    run = (lambda: net.loss(x, y).backward()) if h is None else (lambda: MPC(net, h).backward(x, y))
    return measure(run, module=net)[1].saved_peak_bytes


def test_saved_activations_grow_linearly_and_stay_within_h_plus_one_blocks():
    torch.manual_seed(0)
    T, width = 12, 64
    net = resmlp_independent(T=T, width=width, classes=10)
    x, y = torch.randn(32, width), torch.randint(0, 10, (32,))
    bp = saved_bytes(net, x, y)
    z = x
    for block in net.blocks:
        z = block(z).detach()
    head = measure(lambda: net.loss_fn(net.head(T)(z.requires_grad_()), y).backward(), module=net)[1]
    per_h = {h: saved_bytes(net, x, y, h) for h in range(1, T + 1)}
    assert per_h[T] == bp
    for h, used in per_h.items():
        assert used <= (h + 1) / T * bp + head.saved_peak_bytes, f"h={h}"
    steps = {per_h[h + 1] - per_h[h] for h in range(1, T)}
    assert len(steps) == 1, f"M(h) is not affine in h: increments {sorted(steps)}"


@pytest.mark.parametrize("h", [1, 3])
def test_no_graph_outlives_the_call(h):
    net = resmlp_independent(T=5)
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    with SavedTensorMeter(exclude=net.parameters()) as meter:
        MPC(net, h).backward(x, y)
    assert meter.live_bytes == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_peaks_see_a_tensor_made_and_freed_inside_the_call():
    from recede.measure.memory import cuda_peaks

    size = 64 * 2**20
    result, allocated, reserved = cuda_peaks(
        lambda: torch.empty(size, dtype=torch.uint8, device="cuda").numel(), "cuda"
    )
    assert result == size and allocated >= size and reserved >= allocated


# -- the real peak -----------------------------------------------------------------------------

MiB = 2**20


def _transient(size: int) -> torch.Tensor:
    """Allocate ``size`` bytes, use them, free them; return a small result."""
    big = torch.ones(size // 4, dtype=torch.float32)
    total = big.sum().reshape(1)
    del big
    return total


def test_allocation_peak_sees_a_tensor_allocated_and_freed_inside_the_call():
    from recede.measure.memory import allocation_peak

    kept = torch.ones(MiB)  # allocated before the call and freed inside it: never below 0
    result, peak = allocation_peak(lambda: _transient(64 * MiB))
    assert result.item() == 16 * MiB
    assert 64 * MiB <= peak < 65 * MiB
    _, nothing = allocation_peak(lambda: kept.add_(1))
    assert nothing < MiB
    _, report = measure(lambda: _transient(64 * MiB), real=True)
    assert 64 * MiB <= report.allocated_peak_bytes < 65 * MiB
    assert report.saved_peak_bytes == 0  # the meter sees nothing saved for backward


@pytest.mark.slow
def test_resident_peak_agrees_with_the_allocation_events():
    """The independent check, in a fresh process where glibc returns freed memory at once."""
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from recede.measure.memory import allocation_peak, resident_peak, return_freed_memory\n"
        "assert return_freed_memory()\n"
        "from tests_transient import step\n"
        "step(); allocation_peak(step)\n"  # warm up (the profiler's first start allocates)
        "print(resident_peak(step)[1], allocation_peak(step)[1])\n"
    )
    import os
    from pathlib import Path

    here = Path(__file__).parent
    helper = (
        "import torch\n"
        "def step():\n"
        "    a = torch.ones(2 ** 24)\n"  # 64 MiB
        "    b = torch.relu(a) * 2\n"  # another 128 MiB at once: a, b, the product
        "    return float((b - a).sum())\n"
    )
    tmp = Path(os.environ.get("PYTEST_TMPDIR", "/tmp")) / f"recede-memtest-{os.getpid()}"
    tmp.mkdir(exist_ok=True)
    (tmp / "tests_transient.py").write_text(helper)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here.parent / "src"), str(tmp)]), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    resident, allocated = map(int, out.stdout.split())
    assert 190 * MiB <= allocated < 200 * MiB  # a, relu(a), b: three 64 MiB tensors at once
    assert abs(resident - allocated) < 0.05 * allocated
