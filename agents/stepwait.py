"""Waiting for a step's decision without reading the database over and over.

Whatever changes a remote run's steps outside the agent's own request — a person decides
or cancels an approval, an approval expires, a kill switch is engaged — calls `ring_run`
in its transaction; after the commit a doorbell goes to the run's group on the channel
layer (Redis in production, in memory in the embedded console; console.live sends it).
A waiter joins the group on a channel of its own, reads the state, and waits for a
doorbell only if the state says it must: a decision committed between the read and the
wait is not missed, because the doorbell of a commit after the join is queued on the
channel. The doorbell carries nothing; the waiter reads the state again once after each
one, so a lost doorbell costs a timeout and loses nothing.

    async with run_bell(run_id) as bell:
        state = await read()
        while state is pending and time is left:
            if await bell.wait(time_left):
                state = await read()
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from channels.layers import InMemoryChannelLayer, get_channel_layer

from console import live


def run_group(run_id: int) -> str:
    return f"steps.run.{run_id}"


def ring_run(run_id: int) -> None:
    """After the current transaction commits (at once outside one), wake every waiter on
    the run's steps."""
    live.ring_group_on_commit(run_group(run_id))


def ring_runs(run_ids: list[int]) -> None:
    for run_id in run_ids:
        ring_run(run_id)


class Bell:
    """A waiter's place in a run's group (see run_bell)."""

    def __init__(self, layer: Any, channel: str) -> None:
        self.layer = layer
        self.channel = channel

    async def wait(self, timeout: float) -> bool:
        """True when a doorbell rang since the bell was made or last rang; False after
        `timeout` seconds without one."""
        if self.layer is None or timeout <= 0:
            return False
        try:
            await asyncio.wait_for(self.layer.receive(self.channel), timeout)
        except TimeoutError:
            return False
        return True


@contextlib.asynccontextmanager
async def run_bell(run_id: int) -> AsyncIterator[Bell]:
    """Join the run's group for the block: read the state inside it, then wait."""
    layer = get_channel_layer()
    if layer is None:
        yield Bell(None, "")
        return
    if isinstance(layer, InMemoryChannelLayer):
        # The in-memory layer lives on this loop: doorbells rung from other threads are
        # handed to it (console.live).
        live.register_web_loop(asyncio.get_running_loop())
    channel = await layer.new_channel()
    group = run_group(run_id)
    await layer.group_add(group, channel)
    try:
        yield Bell(layer, channel)
    finally:
        await layer.group_discard(group, channel)


async def step_changed(run_id: int, timeout: float) -> bool:
    """True when something about the run's steps changes within `timeout` seconds (a
    decision committed, a switch engaged), False on timeout. It listens from the call on:
    a caller that reads the state first and must not miss a change made between its read
    and this call uses `run_bell` instead (join, read, wait)."""
    async with run_bell(run_id) as bell:
        return await bell.wait(timeout)
