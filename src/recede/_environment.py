"""The environment, checked before torch loads: an ``OMP_NUM_THREADS`` that is not a positive
integer (or a comma-separated list of them) is taken out of the environment before libgomp
reads it (libgomp would print a warning and ignore it), and kept in
:data:`INVALID_OMP_NUM_THREADS`, which the command line refuses in one line."""

from __future__ import annotations

import os


def _valid_threads(text: str) -> bool:
    return all(part.strip().isdigit() and int(part) > 0 for part in text.split(","))


INVALID_OMP_NUM_THREADS: str | None = os.environ.get("OMP_NUM_THREADS")
"""The invalid ``OMP_NUM_THREADS`` this process was started with (None: valid or unset)."""
if INVALID_OMP_NUM_THREADS is not None and _valid_threads(INVALID_OMP_NUM_THREADS):
    INVALID_OMP_NUM_THREADS = None
elif INVALID_OMP_NUM_THREADS is not None:
    del os.environ["OMP_NUM_THREADS"]
