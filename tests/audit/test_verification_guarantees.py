"""What verification reports is true: it reads one snapshot while the console writes, it
never crashes, it checks what the pages show, and the badge shows only an outcome that is
itself proven and fresh (issue 9, items 9, 11, 12 and 13)."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest
from django.db import connections, transaction

from audit import verbs
from audit.services import APPEND_SQL, SYSTEM, append_args, audit_record, event_content
from audit.signing import checkpoint_sign
from audit.verify import Outcome, chain_verify
from tests.conftest import db_url, wait_for


def record(n: int, *, what: str = "x") -> int:
    seq = 0
    for i in range(n):
        with transaction.atomic():
            seq = audit_record(
                verb=verbs.RUN_QUEUED,
                actor=SYSTEM,
                subject_type="run",
                subject_id=i,
                payload={"what": what, "i": i},
            )
    return seq


def in_thread(target: Any) -> tuple[threading.Thread, dict[str, Any]]:
    """Run target in a thread of its own (so with a connection of its own)."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = target()
        except BaseException as exc:  # noqa: BLE001 - the test asserts on it
            result["error"] = exc
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def waiting_on_the_chain_head(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock' AND query ILIKE %s",
        ("%audit_chainhead%",),
    ).fetchone()
    return bool(row and row[0])


# --- item 9: one snapshot ---------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_writer_committing_while_verification_reads_is_no_false_alarm() -> None:
    """Deterministic: a writer has appended #N and moved the head but not committed, and
    holds the head table so the verifier waits on it after reading the events; then it
    commits. Read at READ COMMITTED, the head then says #N while the events end at #N-1."""
    head = record(5)
    checkpoint_sign()
    content = event_content(verb=verbs.RUN_QUEUED, actor=SYSTEM, subject_type="run", subject_id=9)
    with psycopg.connect(db_url()) as writer, psycopg.connect(db_url(), autocommit=True) as probe:
        writer.execute(APPEND_SQL, append_args(content))
        writer.execute("LOCK TABLE audit_chainhead IN ACCESS EXCLUSIVE MODE")
        thread, result = in_thread(chain_verify)
        wait_for(
            lambda: waiting_on_the_chain_head(probe),
            message="the verification to wait on the chain head",
        )
        writer.commit()
    thread.join(timeout=60)
    outcome: Outcome = result["value"]
    assert outcome.ok, outcome.message
    assert outcome.up_to_seq in (head, head + 1)


@pytest.mark.django_db(transaction=True)
def test_verification_while_writers_append_never_raises_a_false_alarm() -> None:
    record(200)
    checkpoint_sign()
    done = threading.Event()
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            i = 0
            while not done.is_set():
                with transaction.atomic():
                    audit_record(
                        verb=verbs.RUN_QUEUED,
                        actor=SYSTEM,
                        subject_type="run",
                        subject_id=n,
                        payload={"writer": n, "i": i},
                    )
                i += 1
                if i % 25 == 0:
                    checkpoint_sign()
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    try:
        outcomes = [chain_verify() for _ in range(30)]
    finally:
        done.set()
        for thread in threads:
            thread.join()
    assert not errors
    assert [o.message for o in outcomes if not o.ok] == []
