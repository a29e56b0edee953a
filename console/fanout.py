"""Render once, fan out (DESIGN section 8): one live renderer per web process.

The sockets of a process are grouped by what their people may see — their visibility
class, the audit trail's one rule (audit.selectors.Scope): everything, or a set of teams
and agents. The renderer listens on the channel layer for the doorbells of every group
one of its classes may see; on a doorbell it reads the new events once (by seq, after
the last it read), renders each event's line once, and for each class puts one frame —
the same string — in the outbox of every socket of that class. Work per event grows
with the classes, not with the sockets; a socket's own task only sends.

A frame a slow socket has no room for is dropped: the next frame's data-after shows the
page the gap, and it fetches what it missed over HTTP, as after a lost doorbell. Each
process has its own renderer, so a socket receives events committed by any process.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings

from audit.models import AuditEvent
from audit.selectors import Scope, latest_seq
from console import frames, live

log = logging.getLogger(__name__)

# Frames waiting for one socket; a socket further behind than this is dropped a frame
# (its page sees the gap and catches up over HTTP) rather than holding memory for it.
OUTBOX = 64


@dataclass(eq=False)
class Audience:
    """The open sockets of one visibility class in this process."""

    scope: Scope
    last: int  # the newest event sent to this class: the next frame's data-after
    outboxes: set[asyncio.Queue[str]] = field(default_factory=set)


@dataclass
class Stats:
    """Counted, not timed: what the renderer did (tests assert one read and one render per
    event however many sockets listen)."""

    reads: int = 0  # queries of new events
    events_read: int = 0  # rows they returned
    renders: int = 0
    frames: int = 0
    dropped: int = 0


class Renderer:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.audiences: dict[Scope, Audience] = {}
        self.after: int | None = None  # the newest event read
        self.stats = Stats()
        self.wake = asyncio.Event()
        self.reading = asyncio.Lock()  # a read and its fan-out, or a socket joining
        self.membership = asyncio.Lock()
        self.wanted: Counter[str] = Counter()
        self.joined: set[str] = set()
        self.channel: str | None = None
        self.tasks: list[asyncio.Task[None]] = []

    # --- sockets ---------------------------------------------------------------------

    async def join(self, scope: Scope, outbox: asyncio.Queue[str]) -> int:
        """Add a socket's outbox to its class; put the hello frame in it and return the
        seq it says: the socket is sent every event of its class after that one."""
        async with self.reading:
            await self._start()
            assert self.after is not None
            audience = self.audiences.get(scope)
            if audience is None:
                audience = self.audiences[scope] = Audience(scope, self.after)
                self.wanted.update(frames.groups_for(scope))
            audience.outboxes.add(outbox)
            start = self.after
            outbox.put_nowait(frames.hello_frame(start))
        if await self._sync_groups():
            # A doorbell rung before the group was joined was not heard: read once now.
            self.wake.set()
        return start

    async def leave(self, scope: Scope, outbox: asyncio.Queue[str]) -> None:
        audience = self.audiences.get(scope)
        if audience is None or outbox not in audience.outboxes:
            return
        audience.outboxes.discard(outbox)
        if not audience.outboxes:
            del self.audiences[scope]
            self.wanted.subtract(frames.groups_for(scope))
            await self._sync_groups()

    async def _sync_groups(self) -> bool:
        """Join the groups some class here may see and leave the others, one change at a
        time (a join and a leave racing on one group end as the counts say)."""
        layer = get_channel_layer()
        async with self.membership:
            wanted = {g for g, n in self.wanted.items() if n > 0}
            added = wanted - self.joined
            for group in added:
                await layer.group_add(group, self.channel)
            for group in self.joined - wanted:
                await layer.group_discard(group, self.channel)
            self.joined = wanted
        return bool(added)

    # --- the reader ------------------------------------------------------------------

    async def _start(self) -> None:
        if self.channel is not None:
            return
        self.after = await database_sync_to_async(latest_seq, thread_sensitive=False)()
        self.channel = await get_channel_layer().new_channel()
        self.tasks = [
            asyncio.create_task(self._listen(), name="live-renderer-listen"),
            asyncio.create_task(self._read_forever(), name="live-renderer-read"),
        ]

    async def _listen(self) -> None:
        layer = get_channel_layer()
        while True:
            try:
                message = await layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis away: the periodic read covers until it is back
                log.warning("live renderer cannot hear doorbells", exc_info=True)
                await asyncio.sleep(1)
                continue
            if message.get("type") == live.DOORBELL:
                self.wake.set()

    async def _read_forever(self) -> None:
        while True:
            try:
                async with asyncio.timeout(settings.BATON_LIVE_RECHECK_SECONDS):
                    await self.wake.wait()  # or the timeout: the net for a lost doorbell
            except TimeoutError:
                pass
            self.wake.clear()
            if not self.audiences:
                continue
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("live renderer failed to read or render")

    async def flush(self) -> None:
        """Read every event after the last one read, in batches, and fan each out."""
        while True:
            async with self.reading:
                assert self.after is not None
                scopes = list(self.audiences)
                read = database_sync_to_async(self._read_and_render, thread_sensitive=False)
                events, framed = await read(self.after, scopes)
                if not events:
                    return
                self.after = events[-1].seq
                self._fan_out(framed)
            if len(events) < frames.BATCH:
                return

    def _read_and_render(
        self, after: int, scopes: list[Scope]
    ) -> tuple[list[AuditEvent], dict[Scope, tuple[list[AuditEvent], dict[int, str]]]]:
        """In a thread: one read, then each event's line rendered once, for the classes
        that may see it."""
        events = frames.new_events(after)
        self.stats.reads += 1
        self.stats.events_read += len(events)
        fragments: dict[int, str] = {}
        framed = {}
        for scope in scopes:
            visible = [e for e in events if scope.sees(e)]
            if not visible:
                continue
            for event in visible:
                if event.seq not in fragments:
                    fragments[event.seq] = frames.render_event(event)
                    self.stats.renders += 1
            framed[scope] = (visible, fragments)
        return events, framed

    def _fan_out(self, framed: dict[Scope, tuple[list[AuditEvent], dict[int, str]]]) -> None:
        for scope, (visible, fragments) in framed.items():
            audience = self.audiences.get(scope)
            if audience is None:
                continue  # its last socket closed while the events were read
            text = frames.frame(visible, audience.last, fragments)
            audience.last = visible[-1].seq
            self.stats.frames += 1
            for outbox in audience.outboxes:
                try:
                    outbox.put_nowait(text)
                except asyncio.QueueFull:
                    self.stats.dropped += 1


_renderer: Renderer | None = None


def renderer() -> Renderer:
    """This process's renderer (one per event loop: a test's loop ends with the test)."""
    global _renderer
    loop = asyncio.get_running_loop()
    if _renderer is None or _renderer.loop is not loop:
        _renderer = Renderer(loop)
    return _renderer


def outbox() -> asyncio.Queue[str]:
    return asyncio.Queue(maxsize=OUTBOX)
