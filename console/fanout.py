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

A socket whose task falls behind its class (frames arrive faster than it can send them)
sends the frames waiting in its outbox that follow one another as one message: one
frame, carrying all their events, whose data-after is the first one's. Sends, not
events, are what a busy process runs out of; the joined text is made once for all the
sockets of the class that are behind by the same frames.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from channels.db import database_sync_to_async
from django.conf import settings

from audit.models import AuditEvent
from audit.selectors import Scope, latest_seq
from console import frames, live

log = logging.getLogger(__name__)

# Frames waiting for one socket; a socket further behind than this is dropped a frame
# (its page sees the gap and catches up over HTTP) rather than holding memory for it.
OUTBOX = 64


@dataclass(eq=False)
class Frame:
    """A frame as the renderer made it for a class: its text, and what it takes to join
    it with the frames that follow it (its events, its lines newest first)."""

    text: str
    after: int
    seq: int
    events: list[AuditEvent] = field(default_factory=list)
    lines: str = ""
    # The text of this frame joined with the ones that follow it, by the last one's seq:
    # made by the first socket of the class that needs it, reused by the others.
    joined: dict[int, str] = field(default_factory=dict)

    @property
    def hello(self) -> bool:
        return not self.events


def join(run: list[Frame]) -> str:
    """One frame for frames that follow one another (run[i + 1].after == run[i].seq)."""
    if len(run) == 1:
        return run[0].text
    first, last = run[0], run[-1]
    text = first.joined.get(last.seq)
    if text is None:
        events = [e for f in run for e in f.events]
        lines = "".join(f.lines for f in reversed(run))
        text = first.joined[last.seq] = frames.frame_of_lines(events, first.after, lines)
    return text


class Message(NamedTuple):
    text: str
    frames: int  # how many of the renderer's frames it joins


class Outbox:
    """The frames waiting for one socket. A socket takes them as messages: the next frame
    and every waiting one that follows it (up to a batch of events), joined."""

    def __init__(self, size: int = 0) -> None:
        self.queue: asyncio.Queue[Frame] = asyncio.Queue(maxsize=size or OUTBOX)
        self.held: Frame | None = None  # taken from the queue, not yet sent

    @property
    def waiting(self) -> bool:
        return self.held is not None or not self.queue.empty()

    def put_nowait(self, frame: Frame) -> None:
        self.queue.put_nowait(frame)  # QueueFull: the caller drops it

    async def get(self) -> Message:
        first, self.held = self.held or await self.queue.get(), None
        run, events = [first], len(first.events)
        while not first.hello and not self.queue.empty():
            following = self.queue.get_nowait()
            events += len(following.events)
            if following.hello or following.after != run[-1].seq or events > frames.BATCH:
                # A frame was dropped between them (the page must see that gap), or the
                # message is big enough: this one starts the next message.
                self.held = following
                break
            run.append(following)
        return Message(join(run), len(run))


@dataclass(eq=False)
class Audience:
    """The open sockets of one visibility class in this process."""

    scope: Scope
    last: int  # the newest event sent to this class: the next frame's data-after
    outboxes: set[Outbox] = field(default_factory=set)


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
        # Its own instance on Redis (live.private_layer): a socket closing cancels its
        # consumer's receive, which on the shared instance could take a doorbell with it.
        self.layer: Any = None
        self.tasks: list[asyncio.Task[None]] = []

    # --- sockets ---------------------------------------------------------------------

    async def join(self, scope: Scope, outbox: Outbox) -> int:
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
            outbox.put_nowait(Frame(frames.hello_frame(start), start, start))
        if await self._sync_groups():
            # A doorbell rung before the group was joined was not heard: read once now.
            self.wake.set()
        return start

    async def leave(self, scope: Scope, outbox: Outbox) -> None:
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
        layer = self.layer
        async with self.membership:
            wanted = {g for g, n in self.wanted.items() if n > 0}
            if live.EVERYTHING in wanted:
                # Every event rings it (live.event_groups): the other groups' doorbells
                # would only wake the renderer again for the same events.
                wanted = {live.EVERYTHING}
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
        self.layer = live.private_layer()
        self.channel = await self.layer.new_channel()
        self.tasks = [
            asyncio.create_task(self._listen(), name="live-renderer-listen"),
            asyncio.create_task(self._read_forever(), name="live-renderer-read"),
        ]

    async def _listen(self) -> None:
        layer = self.layer
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
            lines = "".join(fragments[e.seq] for e in reversed(visible))
            after, seq = audience.last, visible[-1].seq
            made = Frame(frames.frame_of_lines(visible, after, lines), after, seq, visible, lines)
            audience.last = seq
            self.stats.frames += 1
            for outbox in audience.outboxes:
                try:
                    outbox.put_nowait(made)
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


def outbox() -> Outbox:
    return Outbox()
