"""Measurements: memory, the time-cost model, memory/time as paid, gradient fidelity."""
