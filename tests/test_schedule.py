"""The horizon schedule: Algorithm 1 re-run every N epochs, delegating to MPC in between."""

import pytest
import torch

from recede import models
from recede.core.engine import MPC
from recede.horizon.schedule import HorizonSchedule
from recede.horizon.selection import select_horizon
from recede.measure.fidelity import block_gradient_vector
from recede.runs.train import make_optimizer, train


def setup(seed=0):
    torch.manual_seed(seed)
    net = models.build("resmlp", depth=6)
    x = torch.rand(64, 1) * 4 - 2
    data = torch.utils.data.TensorDataset(x, torch.cat([torch.cos(x), torch.sin(x), x, x * x], 1))
    probe = [data[:32], data[32:]]
    return net, data, probe


def test_selects_like_algorithm_1_and_delegates_to_mpc():
    net, _, probe = setup()
    schedule = HorizonSchedule(net, probe, every=2, objective="weighted", weight=0.3)
    assert schedule.horizon == select_horizon(net, probe, objective="weighted", weight=0.3).h
    x, y = probe[0]
    net.zero_grad(set_to_none=True)
    loss = schedule.backward(x, y)
    ours = block_gradient_vector(net).clone()
    net.zero_grad(set_to_none=True)
    assert loss == MPC(net, schedule.horizon).backward(x, y)
    assert torch.equal(ours, block_gradient_vector(net))


def test_reselects_every_n_epochs_and_resumes():
    net, data, probe = setup()
    schedule = HorizonSchedule(net, probe, every=2, objective="weighted", weight=0.3, horizons=[1, 3, 6])
    opt = make_optimizer(net.parameters(), lr=0.05)
    train(
        net,
        schedule,
        data,
        opt,
        epochs=5,
        batch_size=16,
        progress=False,
        on_epoch=lambda record: schedule.epoch_end(record.epoch),
    )
    assert [e["epoch"] for e in schedule.history] == [0, 2, 4]
    assert len(schedule.horizons_by_epoch(5)) == 5
    assert schedule.horizons_by_epoch(5)[4] == schedule.history[-1]["h"]
    state = schedule.state_dict()
    other = HorizonSchedule(models.build("resmlp", depth=6), probe, every=2, objective="weighted", weight=50.0)
    other.load_state_dict(state)
    assert other.horizon == schedule.horizon and other.history == schedule.history
    with pytest.raises(ValueError, match="every"):
        HorizonSchedule(net, probe, every=3, objective="weighted", weight=0.3).load_state_dict(state)


def test_bad_input():
    net, _, probe = setup()
    with pytest.raises(ValueError, match="every"):
        HorizonSchedule(net, probe, every=0, objective="weighted", weight=0.1)
    with pytest.raises(ValueError, match="probe"):
        HorizonSchedule(net, [], every=1, objective="weighted", weight=0.1)
    with pytest.raises(ValueError, match="weight"):
        HorizonSchedule(net, probe, every=1, objective="weighted")
