"""A horizon schedule: re-run Paper A's Algorithm 1 every N epochs and train with its choice.

Paper A §5.1 and App. E.2 observe that cos θ_h of a fixed horizon falls as training goes on:
a small horizon is nearly exact early and poor late.  A horizon fixed before training (Paper A
§4) cannot follow that; :class:`HorizonSchedule` re-measures cos θ_h and M(h) on a fixed probe
set every ``every`` epochs and re-selects h under the same objective and cost
(:func:`recede.horizon.selection.select_horizon`).  It is a training method like the others
(``backward(x, y) -> float``): between selections it delegates to an :class:`recede.MPC` at the
current horizon.

>>> schedule = HorizonSchedule(net, probe, every=2, objective="weighted", weight=0.5)
>>> train(net, schedule, data, opt, epochs=10, batch_size=100,
...       on_epoch=lambda record: schedule.epoch_end(record.epoch))

``state_dict()`` / ``load_state_dict()`` carry the current horizon and the selection history, so
a resumed run continues with the horizon it had.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from recede.core.blocks import BlockNet
from recede.core.engine import MPC
from recede.horizon.selection import select_horizon


class HorizonSchedule:
    """Train with the horizon Algorithm 1 picks, re-picked every ``every`` epochs.

    Args:
        net: the block network.
        probe: the ``(x, y)`` batches on which cos θ_h is measured at each selection.
        every: epochs between selections (the first is made at construction, epoch 0).
        objective, eps, weight, cost_shape, c, M0, horizons: as :func:`recede.select_horizon`.
    """

    def __init__(
        self,
        net: BlockNet,
        probe: Sequence[tuple[torch.Tensor, torch.Tensor]],
        every: int,
        objective: str,
        eps: float | None = None,
        weight: float | None = None,
        cost_shape: str = "linear",
        c: float = 1.0,
        M0: float | None = None,
        horizons: Sequence[int] | None = None,
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive number of epochs, got {every!r}")
        if not probe:
            raise ValueError("probe is empty; give at least one (x, y) batch to measure cos θ_h on")
        self.net, self.probe, self.every = net, list(probe), every
        self.options: dict[str, Any] = dict(
            horizons=horizons, objective=objective, eps=eps, weight=weight, cost_shape=cost_shape, c=c, M0=M0
        )
        self.history: list[dict] = []
        self.engine: MPC
        self.select(0)

    @property
    def horizon(self) -> int:
        return self.engine.horizon

    def select(self, epoch: int) -> int:
        """Run Algorithm 1 on the current weights and switch to its horizon."""
        result = select_horizon(self.net, self.probe, **self.options)
        self.engine = MPC(self.net, result.h)
        self.history.append(
            {
                "epoch": epoch,
                "h": result.h,
                "feasible": result.feasible,
                "cos": {str(h): v for h, v in result.fidelity.cos.items()},
            }
        )
        return result.h

    def epoch_end(self, epoch: int) -> None:
        """Call after epoch ``epoch`` (0-based); re-selects before every ``every``-th epoch."""
        if (epoch + 1) % self.every == 0:
            self.select(epoch + 1)

    def backward(self, x: torch.Tensor, y: torch.Tensor, *, scaler: torch.amp.GradScaler | None = None) -> float:
        """g_h at the current horizon into ``.grad``; returns L(x_T) (see :meth:`MPC.backward`)."""
        return self.engine.backward(x, y, scaler=scaler)

    def horizons_by_epoch(self, epochs: int) -> list[int]:
        """The horizon each of epochs 0..epochs-1 trained with."""
        out, current = [], self.history[0]["h"]
        starts = {entry["epoch"]: entry["h"] for entry in self.history}
        for e in range(epochs):
            current = starts.get(e, current)
            out.append(current)
        return out

    def state_dict(self) -> dict:
        return {"horizon": self.horizon, "every": self.every, "history": [dict(e) for e in self.history]}

    def load_state_dict(self, state: dict) -> None:
        if state["every"] != self.every:
            raise ValueError(
                f"the saved schedule re-selects every {state['every']} epochs, this one every {self.every}"
            )
        self.history = [dict(e) for e in state["history"]]
        self.engine = MPC(self.net, state["horizon"])
