"""The audit sequencer (audit.sequencer, issue 13): events are queued in their writers'
transactions and chained afterwards by one holder at a time — with real processes, a
holder killed mid-batch, and a second candidate taking over."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from typing import Any

import psycopg
import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import connection, transaction

from agents.models import Run
from agents.services import run_start
from audit.chain import canonical_content, chain_hash
from audit.models import AuditEvent, ChainHead, PendingEvent
from audit.sequencer import LOCK_KEY, chain_queued, sequencing_lag
from audit.services import APPEND_SQL, SYSTEM, audit_flush, audit_record, event_content
from audit.verbs import Verb
from audit.verify import chain_verify
from console.live import EVERYTHING
from tests.conftest import ALLOW_ALL_TESTS, ROOT, child_env, db_url, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def queue_raw(conn: psycopg.Connection[Any], label: str) -> None:
    """A writer on a connection of its own, as a worker's: queue one event and commit."""
    content = event_content(
        verb=Verb.RUN_QUEUED, actor=SYSTEM, subject_type="run", subject_id=label
    )
    with conn.transaction():
        conn.execute(APPEND_SQL, {"canonical": canonical_content(content)})


def trail() -> list[tuple[int, str, str, str]]:
    return list(AuditEvent.objects.order_by("seq").values_list("seq", "prev_hash", "hash", "body"))


def assert_one_chain(expected: int) -> None:
    """No gap, no fork, every link recomputed, the head at the end, nothing left queued."""
    rows = trail()
    assert [seq for seq, *_ in rows] == list(range(1, expected + 1))
    prev = "0" * 64
    for seq, prev_hash, stored, body in rows:
        assert prev_hash == prev and chain_hash(prev, seq, body.encode()) == stored
        prev = stored
    head = ChainHead.objects.get(pk=1)
    assert (head.seq, head.hash) == (expected, prev)
    assert not PendingEvent.objects.exists()
    assert chain_verify().ok


# Advisory locks are per database; other databases on the server may have sequencers too.
SEQUENCER_LOCKS = (
    "SELECT pid, granted FROM pg_locks WHERE locktype = 'advisory'"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    " AND ((classid::bigint << 32) | objid::bigint) = %s"
)


def _locks() -> list[tuple[int, bool]]:
    with connection.cursor() as cursor:
        cursor.execute(SEQUENCER_LOCKS, [LOCK_KEY])
        return list(cursor.fetchall())


def holders() -> list[int]:
    """The backends holding the sequencer's lock in this database."""
    return [pid for pid, granted in _locks() if granted]


def waiting_for_lock() -> int:
    return sum(1 for _, granted in _locks() if not granted)


def test_an_event_waits_queued_and_shown_until_it_is_chained(audit_queued: None) -> None:
    with transaction.atomic():
        seq = audit_record(verb=Verb.RUN_QUEUED, actor=SYSTEM, subject_type="run", subject_id=1)
    assert seq is None, "a queued event has no sequence number yet"
    assert not AuditEvent.objects.exists()
    lag = sequencing_lag()
    assert lag.waiting == 1 and lag.oldest is not None
    with transaction.atomic():
        batch = chain_queued()
    assert (batch.count, batch.last_seq) == (1, 1)
    assert sequencing_lag().waiting == 0 and sequencing_lag().oldest is None
    assert_one_chain(1)
    assert AuditEvent.objects.get().verb == "run.queued", "the generated columns read the body"


def test_a_flush_chains_what_is_queued_for_a_reader_that_needs_its_own_event(
    audit_queued: None,
) -> None:
    for i in range(3):
        with transaction.atomic():
            audit_record(verb=Verb.RUN_QUEUED, actor=SYSTEM, subject_type="run", subject_id=i)
    assert audit_flush() == 3
    assert_one_chain(3)


def test_queued_events_cannot_be_changed_or_removed_outside_the_sequencer(
    audit_queued: None,
) -> None:
    with transaction.atomic():
        audit_record(verb=Verb.RUN_QUEUED, actor=SYSTEM, subject_type="run", subject_id=1)
    with psycopg.connect(db_url(), autocommit=True) as conn:
        for attempt in (
            "UPDATE audit_pendingevent SET body = body",
            "DELETE FROM audit_pendingevent",
            "TRUNCATE audit_pendingevent",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="never changed"):
                conn.execute(attempt)
    assert PendingEvent.objects.count() == 1


def test_writers_in_parallel_end_in_one_chain_and_the_live_view_rings_after_chaining(
    audit_queued: None, audit_sequencer: Any
) -> None:
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(EVERYTHING, channel)
    audit_sequencer()
    wait_for(lambda: len(holders()) == 1, message="the candidate to hold the lock")

    def write(n: int) -> None:
        with psycopg.connect(db_url(), autocommit=True) as conn:
            for i in range(50):
                queue_raw(conn, f"w{n}-{i}")

    writers = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    wait_for(lambda: AuditEvent.objects.count() == 200, message="every event to be chained")
    assert_one_chain(200)
    bodies = {event.content["subject_id"] for event in AuditEvent.objects.all()}
    assert bodies == {f"w{n}-{i}" for n in range(4) for i in range(50)}, "each exactly once"
    doorbell = async_to_sync(layer.receive)(channel)
    assert doorbell["type"] == "live.doorbell"


def kill_the_holder_mid_batch(blocker: psycopg.Connection[Any], start: Any) -> Any:
    """Start a holder, catch it inside its batch (waiting on the blocker's uncommitted
    event at #4), start a second candidate, kill the holder: returns the second."""
    blocker.execute(
        "INSERT INTO audit_auditevent (seq, body, prev_hash, hash) VALUES (4, %s, '', '')",
        [
            canonical_content(
                event_content(
                    verb=Verb.RUN_QUEUED, actor=SYSTEM, subject_type="run", subject_id="x"
                )
            ).decode()
        ],
    )
    first = start()
    wait_for(lambda: len(holders()) == 1, message="the first candidate to hold the lock")
    with connection.cursor() as cursor:

        def holder_waits_mid_batch() -> bool:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name ="
                " 'baton audit sequencer' AND wait_event_type = 'Lock'"
                " AND datname = current_database()"
            )
            return bool(cursor.fetchone()[0])

        wait_for(holder_waits_mid_batch, message="the holder to be inside its batch")
    second = start()
    wait_for(lambda: waiting_for_lock() == 1, message="the second candidate to wait")
    assert len(holders()) == 1, "two sequencers never hold at once"
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)
    return second


def test_a_holder_killed_mid_batch_loses_nothing_and_the_next_takes_over(
    audit_queued: None, audit_sequencer: Any
) -> None:
    with psycopg.connect(db_url(), autocommit=True) as conn:
        for i in range(10):
            queue_raw(conn, f"k{i}")
    # An uncommitted event at #4 (another session's): the holder's batch takes #1..#10,
    # writes #1..#3 and waits on #4's unique key — in the middle of its transaction.
    blocker = psycopg.connect(db_url())
    try:
        second = kill_the_holder_mid_batch(blocker, audit_sequencer)
    finally:
        blocker.rollback()  # a failure above must not leave the blocker holding the table
        blocker.close()
    assert second.proc.poll() is None
    wait_for(lambda: AuditEvent.objects.count() == 10, message="the next holder to chain")
    assert_one_chain(10)
    assert {e.content["subject_id"] for e in AuditEvent.objects.all()} == {
        f"k{i}" for i in range(10)
    }
    assert len(holders()) == 1


def test_a_run_in_a_worker_is_chained_by_the_candidate_every_worker_runs(
    audit_queued: None, make_agent: Any, start_worker: Any
) -> None:
    agent = make_agent("counter", "tests.support.agents.counter", ALLOW_ALL_TESTS)
    start_worker(BATON_AUDIT_SEQUENCING="sequencer")
    wait_for(lambda: len(holders()) == 1, message="the worker's candidate to hold the lock")
    run = run_start(agent=agent, input={"label": "s", "steps": 3})

    def finished_and_chained() -> bool:
        run.refresh_from_db()
        return run.status in Run.FINAL and not PendingEvent.objects.exists()

    wait_for(finished_and_chained, message="the run to finish and its events to be chained")
    assert run.status == Run.Status.SUCCEEDED
    verbs = list(
        AuditEvent.objects.filter(run_id=run.pk).order_by("seq").values_list("verb", flat=True)
    )
    assert verbs[0] == "run.queued" and verbs[-1] == "run.succeeded"
    assert verbs.count("action.succeeded") == 3
    assert_one_chain(AuditEvent.objects.count())


def test_the_command_refuses_where_writers_chain_inline() -> None:
    done = subprocess.run(
        [sys.executable, "manage.py", "audit_sequencer"],
        cwd=ROOT,
        env=child_env(DATABASE_URL=db_url(), BATON_AUDIT_SEQUENCING="inline"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "chained by their writers" in done.stderr


def test_the_audit_page_shows_events_waiting_and_warns_when_they_are_late(
    audit_queued: None, settings: Any
) -> None:
    from django.template.loader import render_to_string

    from audit.evidence import integrity

    with transaction.atomic():
        audit_record(verb=Verb.RUN_QUEUED, actor=SYSTEM, subject_type="run", subject_id=1)
    settings.BATON_AUDIT_SEQUENCER_LATE_SECONDS = 3600.0
    shown = render_to_string("audit/badge.html", {"integrity": integrity()})
    assert "1 event waiting to be chained" in shown and "pill warn" not in shown.split("· 1")[1]
    settings.BATON_AUDIT_SEQUENCER_LATE_SECONDS = 0.0
    shown = render_to_string("audit/badge.html", {"integrity": integrity()})
    assert 'role="status">· 1 event waiting to be chained' in shown
    audit_flush()
    shown = render_to_string("audit/badge.html", {"integrity": integrity()})
    assert "waiting to be chained" not in shown


@pytest.mark.parametrize("mode", ["inline", "queued"])
def test_many_events_of_one_change_go_in_one_statement_in_their_order(
    mode: str, request: pytest.FixtureRequest
) -> None:
    from django.test.utils import CaptureQueriesContext

    from audit.services import audit_append_many

    if mode == "queued":
        request.getfixturevalue("audit_queued")
    contents = [
        event_content(verb=Verb.RUN_CANCELLED, actor=SYSTEM, subject_type="run", subject_id=i)
        for i in range(7)
    ]
    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        audit_append_many(contents)
    assert len(queries) == 1
    audit_flush()
    assert [e.content["subject_id"] for e in AuditEvent.objects.order_by("seq")] == [
        str(i) for i in range(7)
    ]
    assert_one_chain(7)
