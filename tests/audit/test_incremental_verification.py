"""The scheduled verification goes on from the head the last signed outcome proved, so
its cost follows the new events, not the trail (issue 13, point 7); the full run stays,
on demand and once a day, and catches what the incremental one cannot see."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext

from audit.chain import chain_hash
from audit.models import AuditEvent, Checkpoint, Verification
from audit.services import SYSTEM, audit_record
from audit.signing import checkpoint_sign, trusted_keys
from audit.tasks import verify as scheduled
from audit.verbs import Verb
from audit.verify import (
    VERIFICATION_UNPROVEN,
    Outcome,
    chain_verify,
    chain_verify_and_record,
    chain_verify_scheduled,
    verification_start,
)
from tests.conftest import chained


def record(n: int, *, what: str = "x") -> int:
    seq = 0
    for i in range(n):
        with transaction.atomic():
            seq = chained(
                audit_record(
                    verb=Verb.RUN_QUEUED,
                    actor=SYSTEM,
                    subject_type="run",
                    subject_id=i,
                    payload={"what": what, "i": i},
                )
            )
    return seq


def as_superuser_without_triggers(sql: str, params: tuple[Any, ...] | list[Any] = ()) -> None:
    """What an attacker holding the database superuser can do: switch triggers off."""
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL session_replication_role = replica")
        cursor.execute(sql, params)
        cursor.execute("SET LOCAL session_replication_role = origin")


def rewrite_with_hashes(first: int, last: int) -> None:
    """Edit #first and recompute the hashes of #first..#last so they link to each other:
    what someone holding the database but not the signing key can do."""
    prev = AuditEvent.objects.get(seq=first).prev_hash
    for event in AuditEvent.objects.filter(seq__gte=first, seq__lte=last).order_by("seq"):
        body = event.body.replace('"what":"x"', '"what":"y"') if event.seq == first else event.body
        new = chain_hash(prev, event.seq, body.encode())
        as_superuser_without_triggers(
            "UPDATE audit_auditevent SET body = %s, prev_hash = %s, hash = %s WHERE seq = %s",
            [body, prev, new, event.seq],
        )
        prev = new


def edit_bytes(seq: int) -> None:
    as_superuser_without_triggers(
        'UPDATE audit_auditevent SET body = replace(body, \'"what":"x"\', \'"what":"z"\') '
        "WHERE seq = %s",
        [seq],
    )


def events_read() -> int:
    """Rows of the events table (its partitions: audit migration 0011) this transaction
    has read so far, by any scan: Postgres's own count, so the test sees what verification
    read, not what it says it read."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT sum(coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)) "
            "FROM pg_stat_xact_user_tables WHERE relname LIKE 'audit\\_auditevent%%'"
        )
        row = cursor.fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def measured(run: Any) -> tuple[Outcome, int]:
    with connection.cursor() as cursor:
        # With statistics Postgres plans the walk from a seq as it does on a big trail (an
        # index range scan); on a fresh, never analysed table any plan may look cheapest.
        cursor.execute("ANALYZE audit_auditevent")
    before = events_read()
    outcome = run()
    return outcome, events_read() - before


def verified_in_full() -> Verification:
    outcome, row = chain_verify_and_record()
    assert outcome.ok and row.from_seq is None, outcome.message
    return row


@pytest.mark.django_db
def test_the_scheduled_run_after_new_events_reads_only_them() -> None:
    record(400)
    checkpoint_sign()
    record(300)
    checkpoint_sign()
    full = verified_in_full()
    head = record(20)
    checkpoint_sign()

    outcome, read = measured(lambda: chain_verify(incremental=True))
    assert outcome.ok, outcome.message
    assert (outcome.from_seq, outcome.up_to_seq) == (full.up_to_seq, head)
    checkpoints_before = Checkpoint.objects.filter(seq__lte=full.up_to_seq).count()
    # The 20 new events, the one it goes on from, and one look-up a checkpoint before it.
    assert read <= 20 + 1 + checkpoints_before, read
    assert outcome.checkpoints == 1  # the new one, its signature checked
    assert f"#{full.up_to_seq}..#{head} recomputed" in outcome.message

    # The measure sees a whole walk for what it is.
    whole, read_in_full = measured(chain_verify)
    assert whole.ok and whole.from_seq is None
    assert read_in_full >= head

    # And its queries do not grow with the new events or the checkpoints.
    def queries(new: int) -> int:
        verified_in_full()
        record(new)
        checkpoint_sign()
        with CaptureQueriesContext(connection) as ran:
            assert chain_verify(incremental=True).ok
        return len(ran.captured_queries)

    assert queries(3) == queries(30)


@pytest.mark.django_db
def test_a_tampered_new_event_is_caught_and_recorded_signed() -> None:
    full = verified_in_full()
    assert full.up_to_seq == 0  # the empty chain: nothing to go on from
    record(5)
    verified_in_full()
    head = record(6)
    edit_bytes(head - 2)
    outcome, row = chain_verify_and_record(incremental=True)
    assert (outcome.ok, outcome.first_bad_seq) == (False, head - 2)
    assert f"#{head - 2} does not match its hash" in outcome.message
    assert (row.ok, row.first_bad_seq, row.from_seq) == (False, head - 2, 5)
    assert row.signature


@pytest.mark.parametrize("how", ["bytes", "hashes to the head"])
@pytest.mark.django_db
def test_a_tampered_start_event_is_caught(how: str) -> None:
    start = record(6)
    verified_in_full()
    head = record(4)
    if how == "bytes":
        edit_bytes(start)
    else:
        rewrite_with_hashes(start, head)  # a chain that links, from #start to the head
        as_superuser_without_triggers(
            "UPDATE audit_chainhead SET hash = (SELECT hash FROM audit_auditevent WHERE seq = %s)",
            [head],
        )
    outcome = chain_verify(incremental=True)
    assert (outcome.ok, outcome.first_bad_seq, outcome.from_seq) == (False, start, start)
    assert f"#{start} no longer holds the hash the verification of" in outcome.message


@pytest.mark.django_db
def test_a_removed_start_event_and_tail_are_caught() -> None:
    start = record(6)
    verified_in_full()
    record(3)
    as_superuser_without_triggers("DELETE FROM audit_auditevent WHERE seq >= %s", [start - 1])
    outcome = chain_verify(incremental=True)
    assert (outcome.ok, outcome.first_bad_seq) == (False, start)
    assert "is missing" in outcome.message


@pytest.mark.parametrize("where", ["table", "file"])
@pytest.mark.django_db
def test_a_rewrite_that_passes_an_earlier_checkpoint_is_caught_incrementally(
    where: str, django_capture_on_commit_callbacks: Any
) -> None:
    record(5)
    with django_capture_on_commit_callbacks(execute=True):
        checkpoint_sign()
    start = record(5)
    verified_in_full()
    record(2)
    # #3..#7 rewritten with hashes that link, stopping short of the start (#10): no link
    # the incremental run reads is broken, but the chain no longer passes signed #5.
    rewrite_with_hashes(3, 7)
    if where == "file":  # the rows are gone too; the copy outside the database remains
        as_superuser_without_triggers("DELETE FROM audit_checkpoint")
    outcome = chain_verify(incremental=True)
    assert (outcome.ok, outcome.first_bad_seq, outcome.from_seq) == (False, 5, start)
    assert "#5 differs from the checkpoint signed at #5" in outcome.message


@pytest.mark.django_db
def test_a_forged_unsigned_verification_is_no_starting_point() -> None:
    start = record(5)
    verified_in_full()
    head = record(5)
    edit_bytes(start + 2)
    forged_hash = AuditEvent.objects.get(seq=head).hash
    with connection.cursor() as cursor:
        # Unsigned, and a copied signature over another head: neither proves anything.
        cursor.execute(
            "INSERT INTO audit_verification (started_at, finished_at, ok, up_to_seq, "
            "up_to_hash, checkpoints, message) VALUES "
            "(now(), now() + interval '1 minute', true, %s, %s, 1, 'chain intact')",
            [head, forged_hash],
        )
        cursor.execute(
            "INSERT INTO audit_verification (started_at, finished_at, ok, up_to_seq, "
            "up_to_hash, first_bad_seq, checkpoints, message, key_id, signature) "
            "SELECT started_at, finished_at + interval '2 minutes', ok, %s, %s, "
            "first_bad_seq, checkpoints, message, key_id, signature "
            "FROM audit_verification WHERE up_to_seq = %s",
            [head, forged_hash, start],
        )
    begin = verification_start(trusted_keys())
    assert begin is not None and begin.up_to_seq == start
    outcome, row = chain_verify_and_record(incremental=True)
    assert (outcome.ok, outcome.from_seq, outcome.first_bad_seq) == (False, start, start + 2)
    assert row.from_seq == start


@pytest.mark.django_db
def test_a_signed_failure_is_not_gone_past_by_an_incremental_run() -> None:
    record(5)
    verified_in_full()
    head = record(3)
    edit_bytes(2)  # before the head verified: the incremental run cannot see it...
    assert chain_verify(incremental=True).ok
    with pytest.raises(CommandError, match="first bad seq 2"):
        call_command("audit_verify")  # ...the full run does, and signs the failure
    # From then on the scheduled run starts from the genesis, so it stays red.
    outcome, row = chain_verify_scheduled()
    assert (outcome.ok, outcome.from_seq, outcome.first_bad_seq) == (False, None, 2)
    assert row.up_to_seq < head


@pytest.mark.django_db
def test_the_full_run_is_still_there_and_catches_an_old_rewrite() -> None:
    record(6)
    verified_in_full()
    record(4)
    assert scheduled() is True  # incremental: a full run finished just now
    latest = Verification.objects.latest("finished_at", "id")
    assert latest.from_seq == 6 and latest.up_to_seq == 10
    edit_bytes(3)
    # What an incremental run cannot see, said in audit/verify.py and the README:
    assert chain_verify(incremental=True).ok
    call_command("audit_verify", incremental=True)
    with pytest.raises(CommandError, match="first bad seq 3"):
        call_command("audit_verify")  # the command runs in full unless told otherwise
    assert Verification.objects.latest("finished_at", "id").from_seq is None


@pytest.mark.django_db
def test_the_scheduled_run_goes_in_full_once_a_day_by_signed_outcomes(settings: Any) -> None:
    record(3)
    assert scheduled() is True
    first = Verification.objects.latest("finished_at", "id")
    assert first.from_seq is None  # no signed full run yet
    record(2)
    assert scheduled() is True
    assert Verification.objects.latest("finished_at", "id").from_seq == 3
    # A forged full run, a day in the future, does not put the real one off.
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO audit_verification (started_at, finished_at, ok, up_to_seq, "
            "checkpoints, message) VALUES (now(), now() + interval '1 day', true, 5, 0, 'x')"
        )
    settings.BATON_AUDIT_FULL_VERIFY_EVERY_SECONDS = 0
    edit_bytes(1)
    assert scheduled() is False
    last = Verification.objects.filter(signature__gt="").latest("finished_at", "id")
    assert (last.from_seq, last.first_bad_seq) == (None, 1)


@pytest.mark.django_db
def test_where_a_run_began_is_signed_and_shown(world: Any) -> None:
    start = record(4)  # after the events of the world's set-up
    verified_in_full()
    head = record(3)
    _, row = chain_verify_and_record(incremental=True)
    assert row.ok and row.from_seq == start
    client = Client()
    client.force_login(world.compliance)
    page = client.get("/audit/integrity").content.decode()
    assert f"Chain verified ✓ up to #{head}" in page
    assert f"#{start}–#{head} rechecked" in page
    with connection.cursor() as cursor:
        # The same signature, claiming a full run.
        cursor.execute(
            "INSERT INTO audit_verification (started_at, finished_at, ok, up_to_seq, "
            "up_to_hash, first_bad_seq, checkpoints, message, key_id, signature, from_seq) "
            "SELECT started_at, finished_at + interval '1 second', ok, up_to_seq, up_to_hash, "
            "first_bad_seq, checkpoints, message, key_id, signature, NULL "
            "FROM audit_verification WHERE id = %s",
            [row.pk],
        )
    page = client.get("/audit/integrity").content.decode()
    assert "Chain verified" not in page and VERIFICATION_UNPROVEN in page


@pytest.mark.django_db
def test_a_flood_of_rows_that_do_not_verify_makes_the_run_full_not_wrong() -> None:
    record(3)
    verified_in_full()
    record(2)
    ours = next(iter(trusted_keys()))
    with connection.cursor() as cursor:
        # Rows under our key id with signatures that do not verify, more than the search
        # looks through: the run starts from the genesis (slower, never wrong).
        cursor.execute(
            "INSERT INTO audit_verification (started_at, finished_at, ok, up_to_seq, "
            "checkpoints, message, key_id, signature) SELECT now(), "
            "now() + (n || ' seconds')::interval, true, 5, 0, 'x', %s, repeat('ab', 64) "
            "FROM generate_series(1, 60) n",
            [ours],
        )
    assert verification_start(trusted_keys()) is None
    outcome = chain_verify(incremental=True)
    assert outcome.ok and outcome.from_seq is None
