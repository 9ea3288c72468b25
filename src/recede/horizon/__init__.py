"""Choosing the horizon: Algorithm 1 (selection) and horizon schedules."""
