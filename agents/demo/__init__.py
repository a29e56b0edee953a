"""Baton's built-in demo: three agents drawn from real enterprise processes, acting on
sandbox tables so every side effect is visible and countable."""

from agents.demo import model, programs, tools  # noqa: F401  (they register on import)
