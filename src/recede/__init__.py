"""recede — receding-horizon (MPC) training of deep networks.

Each block of a network learns from the loss h blocks ahead: h = 1 is Forward-Forward /
local-loss training, h = T is exact back-propagation (Paper A, SPEC §2).
"""

import os as _os


def _valid_threads(text: str) -> bool:
    return all(part.strip().isdigit() and int(part) > 0 for part in text.split(","))


INVALID_OMP_NUM_THREADS = _os.environ.get("OMP_NUM_THREADS")
"""An ``OMP_NUM_THREADS`` that is not a positive integer (or list of them), taken out of the
environment before torch loads libgomp (which would print a warning and ignore it); the command
line refuses it in one line (None: it was valid or unset)."""
if INVALID_OMP_NUM_THREADS is not None and _valid_threads(INVALID_OMP_NUM_THREADS):
    INVALID_OMP_NUM_THREADS = None
elif INVALID_OMP_NUM_THREADS is not None:
    del _os.environ["OMP_NUM_THREADS"]

from recede.blocks import BlockNet  # noqa: E402
from recede.engine import MPC, NonFiniteLossError, check_horizon
from recede.bp_modified import BPModified
from recede import data, memory, models
from recede.fidelity import gradient_cosine
from recede.selection import select_horizon
from recede.wrap import wrap

__all__ = ["BlockNet", "BPModified", "MPC", "NonFiniteLossError", "check_horizon", "data", "memory",
           "models", "gradient_cosine", "select_horizon", "wrap"]
__version__ = "0.1.0"
