"""Rate limits per agent, per rule, per fixed window, counted in the shared cache
(Redis in production, so every worker counts against the same window)."""

from __future__ import annotations

import time

from django.core.cache import cache

from agents.policy import RateLimit


def take(agent_id: int, limit: RateLimit) -> float:
    """Count one action against the window; return 0 if admitted, else the seconds
    until the window turns over."""
    now = time.time()
    window = int(now // limit.per)
    key = f"rl:{agent_id}:{limit.tool}:{limit.per}:{window}"
    if cache.add(key, 1, timeout=limit.per + 5):
        count = 1
    else:
        try:
            count = cache.incr(key)
        except ValueError:  # expired between add and incr: this is the first of a new window
            cache.add(key, 1, timeout=limit.per + 5)
            count = 1
    if count <= limit.limit:
        return 0.0
    return max((window + 1) * limit.per - now, 0.05)
