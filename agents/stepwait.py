"""Waiting for a run's steps to change (a decision committed, a switch engaged).

A stand-in with the shared signature until the notification-backed version lands: it
only paces the caller's re-reads, and never claims a change it did not see.
"""

from __future__ import annotations

import asyncio


async def step_changed(run_id: int, timeout: float) -> bool:
    await asyncio.sleep(min(timeout, 0.25))
    return False
