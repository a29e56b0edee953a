"""Live events: after an audit event commits, ring a doorbell on the channel layer for the
groups that may see it (per agent, per team, everyone). The doorbell carries no event:
each web process's live renderer (console.fanout) reads the new events from Postgres once
and sends each socket what its person may see (DESIGN section 8), so a lost doorbell
delays a frame and loses nothing.

Doorbells are rung from one event loop per process (a daemon thread), so the gateway's
hot path only queues a tuple. The in-memory layer of the embedded console lives on the
web server's loop, which the first consumer registers; before that nobody listens.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from channels import DEFAULT_CHANNEL_LAYER
from channels.layers import InMemoryChannelLayer, channel_layers, get_channel_layer
from django.db import transaction

log = logging.getLogger(__name__)

EVERYONE = "live.all"  # events every signed-in person sees: the global switch
EVERYTHING = "live.everything"  # every event: for those who see the whole trail
_web_loop: asyncio.AbstractEventLoop | None = None
_own_loop: asyncio.AbstractEventLoop | None = None
_lock = threading.Lock()


def private_layer() -> Any:
    """A channel layer for a receiver that must hear every doorbell (the live renderer, a
    long poll's bells): on Redis an instance of its own. The Redis layer receives for all
    the channels of an instance at once, one receive popping the next message of any of
    them, and a receive cancelled just after Redis popped a message loses it — Channels
    cancels a consumer's receive when its socket closes. On an instance of its own the
    doorbells are popped by nobody else (the groups are in Redis, so doorbells rung through
    the default instance reach it). In memory: the default instance, where the groups are."""
    layer = get_channel_layer()
    if layer is None or isinstance(layer, InMemoryChannelLayer):
        return layer
    return channel_layers.make_backend(DEFAULT_CHANNEL_LAYER)


def agent_group(agent_id: int) -> str:
    return f"live.agent.{agent_id}"


def team_group(team_id: int) -> str:
    return f"live.team.{team_id}"


def team_level_group(team_id: int) -> str:
    """Events about a team as a whole (no agent): for those who see the team only
    through one of its agents."""
    return f"live.team-level.{team_id}"


def user_group(user_id: int) -> str:
    return f"live.user.{user_id}"


def register_web_loop(loop: asyncio.AbstractEventLoop) -> None:
    global _web_loop
    _web_loop = loop


def _loop() -> asyncio.AbstractEventLoop | None:
    global _own_loop
    if isinstance(get_channel_layer(), InMemoryChannelLayer):
        return _web_loop
    with _lock:
        if _own_loop is None:
            _own_loop = asyncio.new_event_loop()
            threading.Thread(
                target=_own_loop.run_forever, name="live-doorbell", daemon=True
            ).start()
        return _own_loop


def event_groups(agent_id: int | None, team_id: int | None) -> list[str]:
    """Every group that may see an event of this agent and team: a process's renderer
    joins the groups of what its sockets' people may see (console.frames.groups_for), and
    sorts the events it reads under the same rule, so a doorbell rung too widely shows
    nothing."""
    groups = [EVERYTHING]
    if agent_id is not None:
        groups.append(agent_group(agent_id))
    if team_id is not None:
        groups.append(team_group(team_id))
        if agent_id is None:
            groups.append(team_level_group(team_id))
    if agent_id is None and team_id is None:
        groups.append(EVERYONE)
    return groups


def _send(groups: list[str], message: dict[str, Any]) -> None:
    loop, layer = _loop(), get_channel_layer()
    if loop is None or layer is None:
        return
    loop.call_soon_threadsafe(_schedule, loop, layer, groups, message)


DOORBELL = "live.doorbell"
# Sends in flight at once, per loop. Without a bound a burst of events (a busy fleet, a
# backlog after a pause) started one send per ring at once, and the Redis layer opened a
# connection for each until Redis refused every client (its maxclients).
MAX_SENDS = 16
_pending: dict[asyncio.AbstractEventLoop, set[str]] = {}
_slots: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}


def _schedule(
    loop: asyncio.AbstractEventLoop, layer: Any, groups: list[str], message: dict[str, Any]
) -> None:
    """On the loop. A doorbell carries no event, so a group whose doorbell is queued and
    not yet sent needs no second one: that doorbell goes out later and its sockets read
    everything committed until then."""
    pending = _pending.setdefault(loop, set())
    slots = _slots.setdefault(loop, asyncio.Semaphore(MAX_SENDS))
    for group in groups:
        if message.get("type") == DOORBELL:
            if group in pending:
                continue
            pending.add(group)
        loop.create_task(_deliver(layer, slots, pending, group, message)).add_done_callback(_report)


async def _deliver(
    layer: Any, slots: asyncio.Semaphore, pending: set[str], group: str, message: dict[str, Any]
) -> None:
    async with slots:
        # From here on a new event needs a new doorbell: this one may already be read.
        pending.discard(group)
        await layer.group_send(group, message)


def _report(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("live doorbell not delivered: %s", task.exception())


def ring_on_commit(*, agent_id: int | None, team_id: int | None) -> None:
    """After the current transaction commits, tell the sockets that may see it."""
    groups = event_groups(agent_id, team_id)
    transaction.on_commit(lambda: _send(groups, {"type": DOORBELL}), robust=True)


def ring_groups(groups: list[str]) -> None:
    """Ring these groups' doorbells now: the audit sequencer, after a batch commits."""
    _send(groups, {"type": DOORBELL})


def ring_group_on_commit(group: str) -> None:
    """After the current transaction commits, ring one group's doorbell (agents.stepwait)."""
    transaction.on_commit(lambda: _send([group], {"type": DOORBELL}), robust=True)


def say_to_user(user_id: int, message: dict[str, Any]) -> None:
    _send([user_group(user_id)], message)
