"""Baton's built-in demo: three agents drawn from real enterprise processes, acting on
sandbox tables so every side effect is visible and countable."""

# They register on import: the tools, programs and model, and the demo workload's task.
from agents.demo import model, programs, tasks, tools  # noqa: F401
