"""Pipeline-parallel receding-horizon training (SPEC §8): stages of consecutive blocks on ranks.

:class:`Pipeline` is one rank's stage under ``torchrun``; :mod:`recede.parallel.pipeline.plan` holds
the stage split, the chains a horizon step is made of and the schedule.  See docs/pipeline.md.
"""

from recede.parallel.pipeline.plan import Plan, balanced_sizes, even_sizes, simulate
from recede.parallel.pipeline.stage import Pipeline, StepTiming, forward_times

__all__ = ["Pipeline", "Plan", "StepTiming", "balanced_sizes", "even_sizes", "forward_times", "simulate"]
