"""recede — receding-horizon (MPC) training of deep networks.

Each block of a network learns from the loss h blocks ahead: h = 1 is Forward-Forward /
local-loss training, h = T is exact back-propagation (Paper A, SPEC §2).
"""

import recede._environment  # noqa: F401  (first: it checks OMP_NUM_THREADS before torch loads libgomp)
from recede import data, models
from recede.bpm.estimator import BPModified
from recede.core.blocks import BlockNet
from recede.core.engine import MPC, NonFiniteLossError, check_horizon
from recede.horizon.selection import select_horizon
from recede.measure import memory
from recede.measure.fidelity import gradient_cosine
from recede.wrap import wrap

__all__ = [
    "BlockNet",
    "BPModified",
    "MPC",
    "NonFiniteLossError",
    "RunConfig",
    "check_horizon",
    "data",
    "memory",
    "models",
    "gradient_cosine",
    "run",
    "select_horizon",
    "wrap",
]


def __getattr__(name: str):
    """``recede.run`` and ``recede.RunConfig`` (the run layer, loaded on first use)."""
    if name == "run":
        from recede.runs.run import run

        return run
    if name == "RunConfig":
        from recede.runs.config import RunConfig

        return RunConfig
    raise AttributeError(f"module 'recede' has no attribute {name!r}")


__version__ = "0.1.0"
