"""On Postgres the trail is partitioned by ranges of `seq` (audit migration 0011): events
cross from one partition to the next without a gap, the trail stays append-only on every
partition, verification and export read straight across the boundaries, and a partition
detached and attached again (as when it moves to cheaper storage) still verifies."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from django.db import DatabaseError, connection, transaction
from django.db.models import Q

from audit import offline
from audit.chain import canonical_content, chain_hash
from audit.export import export_plan, jsonl_chunks
from audit.models import AuditEvent, ChainHead
from audit.partitions import PARTITION_SIZE, partitions_ahead
from audit.services import APPEND_SQL, SYSTEM, audit_record, event_content
from audit.signing import checkpoint_sign, key_id, signing_key
from audit.verbs import Verb
from audit.verify import chain_verify
from tests.conftest import chained

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="SQLite keeps a plain table"),
]

migration = importlib.import_module("audit.migrations.0011_partitioned_trail")
SMALL = 5  # events a partition in these tests


def record(n: int) -> list[int]:
    seqs = []
    for i in range(n):
        with transaction.atomic():
            seqs.append(
                chained(
                    audit_record(
                        verb=Verb.RUN_QUEUED,
                        actor=SYSTEM,
                        subject_type="run",
                        subject_id=i,
                        payload={"i": i, "note": "naïve ✓"},
                    )
                )
            )
    return seqs


def sql(statement: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def partitions() -> list[tuple[str, str]]:
    """(name, bounds) of each attached partition, in order of their ranges."""
    return sql(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'audit_auditevent'::regclass ORDER BY c.relname"
    )


def where_events_are() -> dict[int, str]:
    return dict(sql("SELECT seq, tableoid::regclass::text FROM audit_auditevent ORDER BY seq"))


@pytest.fixture
def small_partitions() -> None:
    """The empty trail laid out again in ranges of SMALL events (inside the test's
    transaction, so the real layout comes back after it)."""
    assert not AuditEvent.objects.exists()
    for name, bounds in partitions():
        if bounds != "DEFAULT":
            sql(f"ALTER TABLE audit_auditevent DETACH PARTITION {name}")
            sql(f"DROP TABLE {name}")
    assert partitions_ahead(size=SMALL) == 1
    assert [b for _, b in partitions()] == ["DEFAULT", "FOR VALUES FROM (MINVALUE) TO ('6')"]


def test_the_trail_is_partitioned_by_ranges_of_seq_with_a_default_partition() -> None:
    ((strategy, column),) = sql(
        "SELECT p.partstrat, a.attname FROM pg_partitioned_table p JOIN pg_attribute a "
        "ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0] "
        "WHERE p.partrelid = 'audit_auditevent'::regclass"
    )
    assert (strategy, column) == ("r", "seq")
    bounds = dict(partitions())
    assert bounds["audit_auditevent_default"] == "DEFAULT"
    assert bounds["audit_auditevent_p000000000001"] == (
        f"FOR VALUES FROM (MINVALUE) TO ('{PARTITION_SIZE + 1}')"
    )


def test_the_migration_and_the_code_agree_on_the_partition_size() -> None:
    assert migration.PARTITION_SIZE == PARTITION_SIZE


def test_appends_cross_partition_boundaries_without_a_gap(small_partitions: None) -> None:
    for _ in range(13):
        record(1)
        partitions_ahead(size=SMALL)  # as the checkpoint task does
    placed = where_events_are()
    assert list(placed) == list(range(1, 14))
    assert {placed[1], placed[5]} == {"audit_auditevent_p000000000001"}
    assert {placed[6], placed[10]} == {"audit_auditevent_p000000000006"}
    assert {placed[11], placed[13]} == {"audit_auditevent_p000000000011"}
    # Room for a whole range past the head, and nothing in the DEFAULT partition.
    assert ("audit_auditevent_p000000000016", "FOR VALUES FROM ('16') TO ('21')") in partitions()
    assert sql("SELECT count(*) FROM audit_auditevent_default") == [(0,)]
    checkpoint_sign()
    outcome = chain_verify()
    assert outcome.ok and outcome.up_to_seq == 13, outcome.message


def test_an_orm_insert_returns_its_id_across_a_boundary(small_partitions: None) -> None:
    """The Python writer's path (SQLite's) on the partitioned table: INSERT … RETURNING id."""
    record(SMALL)
    partitions_ahead(size=SMALL)
    with transaction.atomic():
        head = ChainHead.objects.select_for_update().get(pk=1)
        body = canonical_content(
            event_content(verb=Verb.RUN_QUEUED, actor=SYSTEM, subject_type="run", subject_id=9)
        )
        digest = chain_hash(head.hash, head.seq + 1, body)
        event = AuditEvent.objects.create(
            seq=head.seq + 1, body=body.decode(), prev_hash=head.hash, hash=digest
        )
        ChainHead.objects.filter(pk=1).update(seq=event.seq, hash=digest)
    assert event.pk is not None
    assert AuditEvent.objects.get(pk=event.pk).seq == SMALL + 1
    assert where_events_are()[SMALL + 1] == "audit_auditevent_p000000000006"
    ids = list(AuditEvent.objects.values_list("id", flat=True))
    assert len(set(ids)) == len(ids) == SMALL + 1
    assert chain_verify().ok


def test_the_sql_append_chains_across_a_boundary(
    small_partitions: None,
) -> None:
    record(SMALL)
    partitions_ahead(size=SMALL)
    content = event_content(verb=Verb.RUN_QUEUED, actor=SYSTEM, subject_type="run", subject_id=1)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(APPEND_SQL, {"canonical": canonical_content(content)})
        _, seq, digest = cursor.fetchone()  # the queued row's id, and the chained event's
    assert seq == SMALL + 1
    assert AuditEvent.objects.get(seq=seq).hash == digest
    assert where_events_are()[seq] == "audit_auditevent_p000000000006"


def test_events_past_the_last_range_land_in_default_and_are_folded_into_a_range(
    small_partitions: None,
) -> None:
    record(8)  # nobody made the next range: #6..#8 go to the DEFAULT partition
    assert [s for s, p in where_events_are().items() if p == "audit_auditevent_default"] == [
        6,
        7,
        8,
    ]
    assert partitions_ahead(size=SMALL) == 2  # the caught events' range, and the next
    placed = where_events_are()
    assert {placed[s] for s in (6, 7, 8)} == {"audit_auditevent_p000000000006"}
    assert sql("SELECT count(*) FROM audit_auditevent_default") == [(0,)]
    record(4)
    assert chain_verify().ok
    # The folded-in range is append-only like any other.
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        sql("UPDATE audit_auditevent_p000000000006 SET body = body WHERE seq = 7")
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        sql("SET LOCAL baton.test_flush = 'off'")
        sql("TRUNCATE audit_auditevent_default")


@pytest.mark.parametrize(
    "table", ["audit_auditevent", "audit_auditevent_p000000000001", "audit_auditevent_default"]
)
def test_no_partition_can_be_updated_deleted_or_truncated(table: str) -> None:
    record(2)
    if table == "audit_auditevent_default":
        # Put an event there: a range ends just past the head, with nothing after it.
        sql("ALTER TABLE audit_auditevent DETACH PARTITION audit_auditevent_p000000000001")
        sql("ALTER TABLE audit_auditevent_p000000000001 RENAME TO kept")
        sql("ALTER TABLE audit_auditevent ATTACH PARTITION kept FOR VALUES FROM (MINVALUE) TO (3)")
        record(1)
        assert where_events_are()[3] == "audit_auditevent_default"
    for attempt in (
        f"UPDATE {table} SET body = body",  # noqa: S608 (the test's own table names)
        f"UPDATE {table} SET hash = repeat('a', 64)",  # noqa: S608
        f"DELETE FROM {table}",  # noqa: S608
        f"TRUNCATE {table}",
    ):
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
            sql("SET LOCAL baton.test_flush = 'off'")  # be the application, not the suite
            sql(attempt)
    assert chain_verify().ok


def test_an_export_across_boundaries_verifies_offline(small_partitions: None) -> None:
    for _ in range(12):
        record(1)
        partitions_ahead(size=SMALL)
    checkpoint_sign()
    assert len({p for p in where_events_are().values()}) == 3
    plan = export_plan(Q(), up_to=12)
    chunks = jsonl_chunks(plan, Q(), by="test", filters={}, generated_at="2026-12-01T00:00:00Z")
    data = b"".join(chunks)
    private = signing_key()
    assert private is not None
    report = offline.verify(data, {key_id(private.public_key()): private.public_key()})
    assert report.ok, report.problems
    assert report.events == 12


def test_a_detached_partition_breaks_verification_and_verifies_again_once_attached(
    small_partitions: None,
) -> None:
    for _ in range(12):
        record(1)
        partitions_ahead(size=SMALL)
    checkpoint_sign()
    # Detached, as for a move elsewhere: its events are missing from the chain, and
    # verification says which.
    sql("ALTER TABLE audit_auditevent DETACH PARTITION audit_auditevent_p000000000006")
    outcome = chain_verify()
    assert not outcome.ok
    assert outcome.first_bad_seq == 6
    assert "events #6..#10 are missing" in outcome.message
    # Attached again (from another tablespace, say): the same bytes, the same chain.
    sql(
        "ALTER TABLE audit_auditevent ATTACH PARTITION audit_auditevent_p000000000006 "
        "FOR VALUES FROM (6) TO (11)"
    )
    outcome = chain_verify()
    assert outcome.ok and outcome.up_to_seq == 12, outcome.message
    # Still append-only: attaching gave it the parent's row trigger back.
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        sql("DELETE FROM audit_auditevent WHERE seq = 7")
    record(1)
    assert chain_verify().ok


def test_the_conversion_keeps_every_event_and_its_id() -> None:
    """The migration's way back to a plain table and forward again, with events in it."""
    record(7)
    before = list(AuditEvent.objects.order_by("seq").values_list("id", "seq", "hash", "verb"))
    with connection.cursor() as cursor:
        migration.unpartition(cursor)
        assert sql("SELECT relkind FROM pg_class WHERE relname = 'audit_auditevent'") == [("r",)]
        record(1)  # the plain table takes appends, ids going on
        migration.partition(cursor, size=SMALL)
    after = list(AuditEvent.objects.order_by("seq").values_list("id", "seq", "hash", "verb"))
    assert after[:7] == before
    assert after[7][1] == 8 and after[7][0] > before[-1][0]
    assert [b for _, b in partitions()] == [
        "DEFAULT",
        "FOR VALUES FROM (MINVALUE) TO ('11')",
        "FOR VALUES FROM ('11') TO ('16')",
    ]
    assert sql("SELECT relkind FROM pg_class WHERE relname = 'audit_auditevent'") == [("p",)]
    record(5)  # across #10 → #11, through the SQL function
    assert where_events_are()[11] == "audit_auditevent_p000000000011"
    ids = list(AuditEvent.objects.values_list("id", flat=True))
    assert len(set(ids)) == len(ids) == 13
    assert chain_verify().ok
