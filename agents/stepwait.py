"""Waiting for a step's decision without reading the database over and over.

Whatever changes a remote run's steps outside the agent's own request — a person decides
or cancels an approval, an approval expires, a kill switch is engaged — calls `ring_run`
in its transaction; after the commit a doorbell goes to the run's group on the channel
layer (Redis in production, in memory in the embedded console; console.live sends it).
A waiter joins the group on a channel of its own, reads the state, and waits for a
doorbell only if the state says it must: a decision committed between the read and the
wait is not missed, because the doorbell of a commit after the join is queued on the
channel. The doorbell carries nothing; the waiter reads the state again after each one.

Two things keep a doorbell from being lost on its way:

- A wait never cancels the layer's receive. The Redis layer receives for all the
  channels of a process at once: one receive pops the process's next message, whoever it
  is for, and hands it on. A receive cancelled after Redis popped a message but before
  the message was handed on (a wait that timed out at that moment, a poll whose client
  went away) lost it — another waiter's doorbell, whose poll then slept out its whole
  wait. So a bell's receive runs as a task of its own that a wait only watches, and a
  bell that stops waiting ends it with a message of its own (`close`). On Redis the
  bells also receive through a layer instance of their own (its own process key in
  Redis): the live sockets' consumers, whose receives Channels cancels when a socket
  closes, never pop a bell's doorbell.
- A waiter also reads the state again every `BATON_STEP_RECHECK_SECONDS` without a
  doorbell, so a doorbell lost anyway (Redis restarted, a send that failed) costs at most
  that, not the rest of the wait.

    async with run_bell(run_id) as bell:
        state = await read()
        while state is pending and time is left:
            if await bell.wait(time_left):   # rang, or a re-check is due
                state = await read()
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from typing import Any

from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.conf import settings

from console import live

# What a bell sends its own channel to end its receive once nobody waits on it.
STOP = "steps.bell.stop"
# How long closing a bell waits for its receive to take that message before it gives up
# and cancels it (the layer is unreachable: nothing is being delivered anyway).
STOP_WAIT_SECONDS = 5.0
_bells_layer: Any = None
_bells_layer_lock = threading.Lock()


def run_group(run_id: int) -> str:
    return f"steps.run.{run_id}"


def ring_run(run_id: int) -> None:
    """After the current transaction commits (at once outside one), wake every waiter on
    the run's steps."""
    live.ring_group_on_commit(run_group(run_id))


def ring_runs(run_ids: list[int]) -> None:
    for run_id in run_ids:
        ring_run(run_id)


def bells_layer() -> Any:
    """The layer bells join and receive on (console.live.private_layer): on Redis one
    instance of their own per process; in memory the default one, where the groups are."""
    global _bells_layer
    layer = get_channel_layer()
    if layer is None or isinstance(layer, InMemoryChannelLayer):
        return layer
    with _bells_layer_lock:
        if _bells_layer is None:
            _bells_layer = live.private_layer()
        return _bells_layer


class Bell:
    """A waiter's place in a run's group (see run_bell)."""

    def __init__(self, layer: Any, channel: str) -> None:
        self.layer = layer
        self.channel = channel
        self._receiving: asyncio.Future[Any] | None = None

    async def wait(self, timeout: float) -> bool:
        """True when the state should be read again: a doorbell rang since the bell was
        made or last rang, or `BATON_STEP_RECHECK_SECONDS` passed without one (while more
        of `timeout` is left). False when `timeout` seconds passed without a doorbell."""
        if self.layer is None or timeout <= 0:
            return False
        recheck = settings.BATON_STEP_RECHECK_SECONDS
        if self._receiving is None:
            self._receiving = asyncio.ensure_future(self.layer.receive(self.channel))
        # asyncio.wait, not wait_for: the receive is watched, never cancelled.
        done, _ = await asyncio.wait({self._receiving}, timeout=min(timeout, recheck))
        if not done:
            return timeout > recheck
        receiving, self._receiving = self._receiving, None
        receiving.result()  # a failure of the layer is the caller's, as any error
        return True

    async def close(self) -> None:
        """End the receive a wait left running: with a message on its own channel, which
        the receive takes as it takes a doorbell (cancelling it could lose one)."""
        receiving, self._receiving = self._receiving, None
        if receiving is None or receiving.done():
            return
        await self.layer.send(self.channel, {"type": STOP})
        done, _ = await asyncio.wait({receiving}, timeout=STOP_WAIT_SECONDS)
        if not done:
            receiving.cancel()
        elif not receiving.cancelled():
            receiving.exception()  # retrieved: a failed receive is not reported twice


@contextlib.asynccontextmanager
async def run_bell(run_id: int) -> AsyncIterator[Bell]:
    """Join the run's group for the block: read the state inside it, then wait."""
    layer = bells_layer()
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
    bell = Bell(layer, channel)
    try:
        yield bell
    finally:
        # Out of the group first: no doorbell is routed to the channel after its stop.
        await layer.group_discard(group, channel)
        await bell.close()


async def step_changed(run_id: int, timeout: float) -> bool:
    """True when something about the run's steps changes within `timeout` seconds (a
    decision committed, a switch engaged), or a re-check is due; False on timeout. It
    listens from the call on: a caller that reads the state first and must not miss a
    change made between its read and this call uses `run_bell` instead (join, read,
    wait)."""
    async with run_bell(run_id) as bell:
        return await bell.wait(timeout)
