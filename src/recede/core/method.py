"""The one interface every training method implements: :class:`Method`.

``backward(x, y, *, scaler=None)`` runs the forward pass on the batch, accumulates the method's
gradient into every trainable parameter's ``.grad`` (added to what is there, as
``loss.backward()`` does) and returns the final loss L(x_T) as a float.  With an enabled
``torch.amp.GradScaler`` the gradients are scaled and ``scaler.step`` unscales them.  A training
loop, the data-parallel wrapper and the run layer need nothing else, so they treat
:class:`recede.MPC`, :class:`~recede.core.loco.LoCoEq21`,
:class:`~recede.core.recompute.CheckpointedBP`, :class:`~recede.bpm.estimator.BPModified`,
:class:`~recede.horizon.schedule.HorizonSchedule`,
:class:`~recede.parallel.data_parallel.DataParallel` and
:class:`~recede.parallel.pipeline.stage.Pipeline` alike.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class Method(Protocol):
    """A training method: ``backward`` fills ``.grad`` and returns the final loss."""

    def backward(self, x: Any, y: Any, *, scaler: torch.amp.GradScaler | None = None) -> float:
        """Forward ``(x, y)``, accumulate the method's gradient into ``.grad``, return L(x_T)."""
        ...
