"""The audit sequencer: one holder at a time chains the events the fleet has queued.

Every state change still writes its audit event in its own transaction, but as a queued
row (audit.models.PendingEvent), without touching the chain head; the writers of the
fleet no longer wait for one another. The sequencer takes committed queued events in
batches, in the order they were queued, gives each the next sequence number and hash,
moves it into the trail, moves the chain head and deletes the queued rows — one
transaction a batch (`baton_audit_sequence` on Postgres), as certificate-transparency
logs integrate queued entries. Then it rings the live view's doorbells: the live view
shows an event once it is chained.

- **One holder.** Candidates (a thread in every worker process, or `manage.py
  audit_sequencer`) wait on a Postgres session advisory lock; the holder runs the batches
  on that same connection, so a holder whose connection is gone has stopped chaining
  before another can take over. Whoever chains locks the chain head row first, so even
  two integrations at once (a holder and a writer chaining inline) would run one after
  the other: no fork, no gap.
- **Crash.** A batch is one transaction: a holder killed mid-batch leaves it queued, and
  the next holder chains it.
- **Woken, with a bound.** A writer's commit wakes the holder through Redis (one push a
  process at a time, coalesced); without a wake the holder looks every
  BATON_AUDIT_SEQUENCER_POLL_SECONDS. `sequencing_lag()` says how many events wait and
  for how long; the audit pages show it.
- **Inline.** The embedded console (SQLite, one process) and the test suite chain each
  event in its writer's transaction (BATON_AUDIT_SEQUENCING=inline), through the same
  queue and the same batch function: the writer is then its own sequencer.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
import redis
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from audit.chain import GENESIS, chain_hash
from audit.models import AuditEvent, ChainHead, PendingEvent
from console.live import event_groups, ring_groups, ring_on_commit

log = logging.getLogger(__name__)

BATCH = 1000  # events a batch chains at most
LOCK_KEY = 7710 << 40  # the session advisory lock candidates wait on
WAKE_KEY = "baton:audit:wake"
SEQUENCE_SQL = "SELECT * FROM baton_audit_sequence(p_limit => %(limit)s)"


def inline() -> bool:
    """Whether each writer chains its own events (the embedded console, the test suite)."""
    return bool(settings.BATON_AUDIT_SEQUENCING == "inline")


@dataclass(frozen=True)
class Batch:
    count: int
    last_seq: int
    last_hash: str
    groups: list[str] = field(default_factory=list)


def _groups(pairs: str | list[list[int | None]]) -> list[str]:
    # Django's cursors read jsonb as text; a plain psycopg connection parses it.
    groups: dict[str, None] = {}
    for agent_id, team_id in json.loads(pairs) if isinstance(pairs, str) else pairs:
        groups.update(dict.fromkeys(event_groups(agent_id, team_id)))
    return list(groups)


def chain_queued(limit: int | None = BATCH) -> Batch:
    """Chain up to `limit` queued events (all of them: None) in the current transaction
    on Django's connection: the writer chaining inline, or a flush. Rings on commit."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("queued events are chained inside a transaction")
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(SEQUENCE_SQL, {"limit": limit})
            count, last_seq, last_hash, pairs = cursor.fetchone()
        batch = Batch(count, last_seq, last_hash, _groups(pairs))
    else:
        batch = _chain_in_python(limit)
    if batch.count:
        groups = batch.groups
        transaction.on_commit(lambda: ring_groups(groups), robust=True)
    return batch


def _chain_in_python(limit: int | None) -> Batch:
    """baton_audit_sequence for SQLite, whose writers queue one at a time anyway."""
    head = ChainHead.objects.select_for_update().filter(pk=1).first()
    if head is None:
        head = ChainHead.objects.create(pk=1, seq=0, hash=GENESIS)
    queued = list(PendingEvent.objects.order_by("pk").values_list("pk", "body")[:limit])
    if not queued:
        return Batch(0, head.seq, head.hash)
    seq, prev = head.seq, head.hash
    events, pairs = [], []
    for _, body in queued:
        seq += 1
        digest = chain_hash(prev, seq, body.encode("utf-8"))
        events.append(AuditEvent(seq=seq, body=body, prev_hash=prev, hash=digest))
        content = json.loads(body)
        pairs.append([content["agent_id"], content["team_id"]])
        prev = digest
    PendingEvent.objects.filter(pk__in=[pk for pk, _ in queued]).delete()
    AuditEvent.objects.bulk_create(events)
    ChainHead.objects.filter(pk=1).update(seq=seq, hash=prev)
    return Batch(len(queued), seq, prev, _groups(pairs))


def after_append(*, agent_id: int | None, team_id: int | None) -> None:
    """What follows a queued event's commit: inline, the live view's doorbell (the event
    is chained already); otherwise a wake for the sequencer, which rings once it is."""
    if inline():
        ring_on_commit(agent_id=agent_id, team_id=team_id)
    else:
        transaction.on_commit(_waker.wake, robust=True)


@dataclass(frozen=True)
class Lag:
    waiting: int
    oldest: datetime | None

    def age(self, now: datetime | None = None) -> timedelta:
        if self.oldest is None:
            return timedelta(0)
        return max(timedelta(0), (now or timezone.now()) - self.oldest)


def sequencing_lag() -> Lag:
    """How many committed events wait to be chained, and since when."""
    queued = PendingEvent.objects.order_by("pk").values_list("queued_at", flat=True)
    oldest = queued.first()
    return Lag(PendingEvent.objects.count() if oldest else 0, oldest)


# --- waking the holder --------------------------------------------------------------


class _Waker:
    """A writer's commit sets an event; one thread a process pushes the wake to Redis, so
    commits that come while a push is on its way share it."""

    def __init__(self) -> None:
        self._due = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def wake(self) -> None:
        if self._thread is None or self._pid != os.getpid():
            with self._lock:
                if self._thread is None or self._pid != os.getpid():
                    self._pid = os.getpid()
                    self._due = threading.Event()
                    self._thread = threading.Thread(
                        target=self._run, name="audit-wake", daemon=True
                    )
                    self._thread.start()
        if not self._due.is_set():  # a wake on its way serves this commit too
            self._due.set()

    def _run(self) -> None:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5)
        while True:
            self._due.wait()
            self._due.clear()
            try:
                client.lpush(WAKE_KEY, 1)
            except redis.RedisError as exc:
                # The holder still looks every poll interval: later, not lost.
                log.warning("audit sequencer not woken: %s", exc)


_waker = _Waker()


# --- the holder ------------------------------------------------------------------------


def _connect() -> psycopg.Connection[Any]:
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    conn = psycopg.connect(**params, autocommit=True)
    # A holder that dies while Postgres waits on a lock for it is noticed within a second,
    # so its batch is rolled back and the next holder takes over.
    conn.execute("SET client_connection_check_interval = 1000")
    conn.execute("SET application_name = 'baton audit sequencer'")
    return conn


def serve(stop: threading.Event | None = None, *, poll: float | None = None) -> None:
    """Be a candidate until `stop` is set: wait to hold the sequencer's lock, then chain
    what is queued, woken by commits or every `poll` seconds. Survives lost connections."""
    stop = stop or threading.Event()
    poll = settings.BATON_AUDIT_SEQUENCER_POLL_SECONDS if poll is None else poll
    while not stop.is_set():
        try:
            with _connect() as conn:
                conn.execute("SELECT pg_advisory_lock(%s)", [LOCK_KEY])
                log.info("audit sequencer: holding (pid %s)", os.getpid())
                _hold(conn, stop, poll)
        except (psycopg.Error, redis.RedisError) as exc:
            log.warning("audit sequencer: %s; trying again", exc)
            stop.wait(poll)


def _hold(conn: psycopg.Connection[Any], stop: threading.Event, poll: float) -> None:
    wakes = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=poll + 5)
    while not stop.is_set():
        batch = batch_run(conn)
        if batch.count >= BATCH:
            continue
        # A wake pushed during that batch is still in the list: the next look is at once.
        # Whatever committed before the wakes are cleared is seen by the next batch.
        wakes.blpop([WAKE_KEY], timeout=poll)
        wakes.delete(WAKE_KEY)


def batch_run(conn: psycopg.Connection[Any]) -> Batch:
    """One batch on the holder's connection, committed, then its doorbells."""
    with conn.transaction(), conn.cursor() as cursor:
        cursor.execute(SEQUENCE_SQL, {"limit": BATCH})
        row = cursor.fetchone()
    assert row is not None
    count, last_seq, last_hash, pairs = row
    batch = Batch(count, last_seq, last_hash, _groups(pairs))
    if batch.count:
        ring_groups(batch.groups)
    return batch


def start_candidate() -> threading.Event | None:
    """A candidate thread in this process, when events are not chained inline: every
    worker process runs one, so a deployment of web and worker processes always has a
    holder. Returns the event that stops it."""
    if inline():
        return None
    stop = threading.Event()
    threading.Thread(target=serve, args=(stop,), name="audit-sequencer", daemon=True).start()
    return stop
