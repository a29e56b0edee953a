"""One audit sequencer at a time (audit.sequencer, issue 13), shown over time: candidates
in processes of their own while writers queue events steadily, holders killed in
turn and others taking over; and a holder chaining at the same moment as an inline writer
and a flush.

Postgres records who chained every batch: a trigger on the chain head (whose row every
batch moves) writes the backend, the range of sequence numbers it chained and whether that
backend held the sequencer's lock at that moment. Meanwhile a sampler reads the lock's
holders from pg_locks again and again."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from django.db import connection

from audit.chain import canonical_content
from audit.models import AuditEvent
from audit.sequencer import LOCK_KEY
from audit.services import APPEND_SQL, SYSTEM, audit_flush, event_content
from audit.verbs import Verb
from tests.audit.test_sequencer import assert_one_chain, holders, queue_raw
from tests.conftest import db_url, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

RECORD_BATCHES = """
CREATE TABLE test_sequenced_batch (
    id bigserial PRIMARY KEY, backend integer, app text, first_seq bigint, last_seq bigint,
    held_lock boolean);
CREATE FUNCTION test_sequenced_batch_record() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO test_sequenced_batch (backend, app, first_seq, last_seq, held_lock)
    SELECT pg_backend_pid(), current_setting('application_name'), OLD.seq + 1, NEW.seq,
           EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = pg_backend_pid()
                     AND l.locktype = 'advisory' AND l.granted
                     AND l.database = (SELECT oid FROM pg_database
                                        WHERE datname = current_database())
                     AND ((l.classid::bigint << 32) | l.objid::bigint) = %s);
    RETURN NULL;
END $$;
CREATE TRIGGER test_sequenced_batch AFTER UPDATE ON audit_chainhead
    FOR EACH ROW EXECUTE FUNCTION test_sequenced_batch_record();
"""
FORGET_BATCHES = """
DROP TRIGGER IF EXISTS test_sequenced_batch ON audit_chainhead;
DROP FUNCTION IF EXISTS test_sequenced_batch_record();
DROP TABLE IF EXISTS test_sequenced_batch;
"""


@dataclass(frozen=True)
class Sequenced:
    backend: int
    app: str
    first_seq: int
    last_seq: int
    held_lock: bool


@pytest.fixture
def batches() -> Iterator[Any]:
    """Every batch from now on, as Postgres recorded it, in the order they committed."""
    with connection.cursor() as cursor:
        cursor.execute(FORGET_BATCHES)
        cursor.execute(RECORD_BATCHES, [LOCK_KEY])

    def recorded() -> list[Sequenced]:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT backend, app, first_seq, last_seq, held_lock FROM test_sequenced_batch"
                " WHERE last_seq >= first_seq ORDER BY id"
            )
            return [Sequenced(*row) for row in cursor.fetchall()]

    yield recorded
    with connection.cursor() as cursor:
        cursor.execute(FORGET_BATCHES)


def assert_batches_one_after_another(batches: list[Sequenced], expected: int) -> None:
    """The batches cover 1..expected, each beginning where the one before ended: none
    chained a number another chained too (a fork) and none skipped one (a gap)."""
    assert batches, "no batch was recorded"
    ranges = sorted((b.first_seq, b.last_seq) for b in batches)
    assert ranges[0][0] == 1 and ranges[-1][1] == expected, ranges
    for (_, last), (first, _) in zip(ranges, ranges[1:], strict=False):
        assert first == last + 1, f"batch from #{first} after one ending at #{last}"


def sequencer_backends() -> set[int]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name = 'baton audit sequencer'"
        )
        return {pid for (pid,) in cursor.fetchall()}


class Writers:
    """Threads queueing events on connections of their own until stopped."""

    def __init__(self, count: int) -> None:
        self.stop = threading.Event()
        self.written = [0] * count
        self.threads = [threading.Thread(target=self._write, args=(n,)) for n in range(count)]
        for thread in self.threads:
            thread.start()

    def _write(self, n: int) -> None:
        with psycopg.connect(db_url(), autocommit=True) as conn:
            while not self.stop.is_set():
                queue_raw(conn, f"w{n}-{self.written[n]}")
                self.written[n] += 1
                self.stop.wait(0.005)  # a steady stream, not a flood on a shared machine

    def finish(self) -> int:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)
        return sum(self.written)


class LockSampler:
    """Reads the sequencer lock's holders from pg_locks, again and again, until stopped."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.samples: list[list[int]] = []
        self.thread = threading.Thread(target=self._sample)
        self.thread.start()

    def _sample(self) -> None:
        from tests.audit.test_sequencer import SEQUENCER_LOCKS

        with psycopg.connect(db_url(), autocommit=True) as conn:
            while not self.stop.is_set():
                rows = conn.execute(SEQUENCER_LOCKS, [LOCK_KEY]).fetchall()
                self.samples.append([pid for pid, granted in rows if granted])
                self.stop.wait(0.01)

    def saw(self, backend: int) -> bool:
        return any(backend in held for held in list(self.samples))

    def finish(self) -> list[list[int]]:
        self.stop.set()
        self.thread.join(30)
        return self.samples


def test_candidates_in_turn_never_two_at_once_while_holders_are_killed(
    audit_queued: None, audit_sequencer: Any, batches: Any
) -> None:
    # Four candidates, started one at a time so each one's backend is known.
    candidates: dict[int, Any] = {}
    for _ in range(4):
        before = sequencer_backends()
        candidate = audit_sequencer()
        (backend,) = wait_for(
            lambda before=before: sequencer_backends() - before,
            message="the new candidate's connection",
        )
        candidates[backend] = candidate
    wait_for(
        lambda: holders() and holders()[0] in candidates,
        message="one of them to hold the lock",  # not a former test's holder, going away
    )
    sampler = LockSampler()
    writers = Writers(2)
    tenures: list[int] = []

    def chained_by(backend: int) -> int:
        return sum(1 for b in batches() if b.backend == backend)

    try:
        # Kill three holders in turn, each once it has chained a few batches: after each,
        # one of those still waiting takes over.
        for _ in range(4):
            holder = holders()[0]
            tenures.append(holder)
            wait_for(lambda holder=holder: chained_by(holder) >= 3, message="batches chained")
            wait_for(lambda holder=holder: sampler.saw(holder), message="a sample of it")
            if len(tenures) == 4:
                break
            candidates[holder].proc.send_signal(signal.SIGKILL)
            candidates[holder].proc.wait(10)
            wait_for(
                lambda holder=holder: holders() and holder not in holders(),
                message="another candidate to take over",
            )
    finally:
        written = writers.finish()
        samples = sampler.finish()
    wait_for(lambda: AuditEvent.objects.count() == written, message="every event chained")

    assert max(len(held) for held in samples) == 1, "two backends held the lock at once"
    recorded = batches()
    assert all(b.held_lock for b in recorded), "a batch was chained without the lock"
    # Each holder chained in one stretch, in the order they took over: never two in turns.
    stretches = [
        b.backend for i, b in enumerate(recorded) if i == 0 or recorded[i - 1].backend != b.backend
    ]
    assert stretches == tenures, "holders' batches interleaved"
    assert_batches_one_after_another(recorded, written)
    assert_one_chain(written)
    assert {e.content["subject_id"] for e in AuditEvent.objects.all()} == {
        f"w{n}-{i}" for n, count in enumerate(writers.written) for i in range(count)
    }, "every event exactly once"


def waiting_on_a_lock() -> int:
    """Backends waiting for a row (a candidate waiting for the sequencer's lock is not)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND wait_event <> 'advisory'"
        )
        return int(cursor.fetchone()[0])


class InThread:
    """A call on a thread of its own, its result or its error kept for the test."""

    def __init__(self, call: Any) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(call,))
        self.thread.start()

    def _run(self, call: Any) -> None:
        try:
            self.result = call()
        except BaseException as exc:
            self.error = exc
        finally:
            connection.close()  # Django's connection of this thread

    def join(self) -> Any:
        self.thread.join(30)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error
        return self.result


def append_inline() -> int:
    """A writer whose session chains inline (baton_audit_append with baton.audit_inline):
    its event is chained in its own transaction. Returns the event's sequence number."""
    content = event_content(
        verb=Verb.RUN_QUEUED, actor=SYSTEM, subject_type="run", subject_id="inline"
    )
    with psycopg.connect(db_url(), autocommit=True) as conn:
        conn.execute("SET application_name = 'inline writer'")
        conn.execute("SET baton.audit_inline = on")
        with conn.transaction():
            row = conn.execute(APPEND_SQL, {"canonical": canonical_content(content)}).fetchone()
    assert row is not None
    return int(row[1])


def test_a_holder_an_inline_writer_and_a_flush_chaining_at_once_make_one_chain(
    audit_queued: None, audit_sequencer: Any, batches: Any
) -> None:
    with psycopg.connect(db_url(), autocommit=True) as conn:
        queue_raw(conn, "first")
    audit_flush()  # the chain head's row exists now: the blocker below can lock it
    audit_sequencer()
    wait_for(lambda: len(holders()) == 1, message="the candidate to hold the lock")
    blocker = psycopg.connect(db_url())
    try:
        # Nobody chains while the blocker holds the chain head's row.
        blocker.execute("SELECT * FROM audit_chainhead WHERE id = 1 FOR UPDATE")
        with psycopg.connect(db_url(), autocommit=True) as conn:
            for i in range(5):
                queue_raw(conn, f"queued-{i}")
        # The holder (which looks every 0.2 s) waits for the head inside its batch, then a
        # writer chaining its own event inline, then a flush (an export's, audit.evidence):
        # all three chain the moment the blocker lets go.
        wait_for(lambda: waiting_on_a_lock() == 1, message="the holder to wait for the head")
        inline = InThread(append_inline)
        wait_for(lambda: waiting_on_a_lock() == 2, message="the inline writer to wait")
        flush = InThread(audit_flush)
        wait_for(lambda: waiting_on_a_lock() == 3, message="the flush to wait")
    finally:
        blocker.rollback()
        blocker.close()
    inline_seq, flushed = inline.join(), flush.join()
    wait_for(lambda: AuditEvent.objects.count() == 7, message="every event chained")

    assert_one_chain(7)
    assert AuditEvent.objects.get(seq=inline_seq).content["subject_id"] == "inline"
    assert 2 <= flushed <= 7
    recorded = batches()
    assert_batches_one_after_another(recorded, 7)
    assert {"baton audit sequencer", "inline writer"} <= {b.app for b in recorded}
    assert all(b.held_lock for b in recorded if b.app == "baton audit sequencer")
