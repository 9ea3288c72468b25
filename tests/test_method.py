"""Every training method is a recede.core.method.Method: ``backward(x, y, *, scaler=None)``
that fills ``.grad`` and returns the final loss as a float."""

from __future__ import annotations

import inspect

import pytest
import torch
from conftest import resmlp_independent
from torch.utils.data import TensorDataset

from recede.core.method import Method
from recede.horizon.schedule import HorizonSchedule
from recede.methods import build_method
from recede.parallel.data_parallel import DataParallel
from recede.parallel.pipeline import Pipeline

NAMES = [
    "bp",
    "ff",
    "mpc:2",
    "mpc-rc:2",
    "loco:2",
    "loco-double:2",
    "loco-eq21:2",
    "ckpt",
    "ckpt:2",
    "sac",
    "sac:2",
    "bpm-ff",
    "bpm-mpc:2",
]


def _batch(n: int = 8, width: int = 4, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, width, generator=g)
    return x, torch.randint(0, classes, (n,), generator=g)


def _methods():
    x, y = _batch(32)
    for name in NAMES:
        yield (
            name,
            lambda name=name: build_method(
                resmlp_independent(4, 4, 3), name, refresh_data=TensorDataset(x, y), batch_size=8
            ),
        )
    yield (
        "HorizonSchedule",
        lambda: HorizonSchedule(resmlp_independent(4, 4, 3), [_batch()], every=1, objective="weighted", weight=0.3),
    )
    yield "DataParallel", lambda: DataParallel(build_method(resmlp_independent(4, 4, 3), "mpc:2"))
    yield "Pipeline", lambda: Pipeline(resmlp_independent(4, 4, 3), 2, micro_batches=2)


@pytest.mark.parametrize("name, make", list(_methods()), ids=[n for n, _ in _methods()])
def test_every_method_is_a_method(name, make):
    method = make()
    assert isinstance(method, Method)
    scaler = inspect.signature(type(method).backward).parameters["scaler"]
    assert scaler.kind is inspect.Parameter.KEYWORD_ONLY and scaler.default is None
    x, y = _batch()
    loss = method.backward(x, y)
    assert isinstance(loss, float)
    assert any(p.grad is not None for p in method.net.parameters())
