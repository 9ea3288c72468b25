"""Parallel training: data parallel ranks, the launcher, the horizon pipeline."""
