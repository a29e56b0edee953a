"""What verification reports is true: it reads one snapshot while the console writes, it
never crashes, it checks what the pages show, and the badge shows only an outcome that is
itself proven and fresh (issue 9, items 9, 11, 12 and 13)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, connections, transaction
from django.db.models import Q
from django.test import Client

from audit.export import export_plan
from audit.models import AuditEvent, ChainHead, Checkpoint, Verification
from audit.services import SYSTEM, audit_record
from audit.signing import CHECKPOINT_FILE, checkpoint_sign, signing_key
from audit.verbs import Verb
from audit.verify import (
    VERIFICATION_MOVED,
    VERIFICATION_UNPROVEN,
    Outcome,
    chain_verify,
    chain_verify_and_record,
)
from tests.conftest import ROOT, chained, child_env, db_url, wait_for


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


def badge(user: Any) -> str:
    client = Client()
    client.force_login(user)
    return client.get("/audit/integrity").content.decode()


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
    holding, release = threading.Event(), threading.Event()

    def writer() -> int:
        with transaction.atomic():
            seq = chained(
                audit_record(verb=Verb.RUN_QUEUED, actor=SYSTEM, subject_type="run", subject_id=9)
            )
            with connection.cursor() as cursor:
                cursor.execute("LOCK TABLE audit_chainhead IN ACCESS EXCLUSIVE MODE")
            holding.set()
            release.wait(timeout=60)
        return seq

    writing, written = in_thread(writer)
    try:
        assert holding.wait(timeout=60), written.get("error")
        verifying, verified = in_thread(chain_verify)
        with psycopg.connect(db_url(), autocommit=True) as probe:
            wait_for(
                lambda: waiting_on_the_chain_head(probe),
                message="the verification to wait on the chain head",
            )
    finally:
        release.set()
        writing.join(timeout=60)
    verifying.join(timeout=60)
    assert "error" not in verified, verified.get("error")
    assert written.get("value") == head + 1
    outcome: Outcome = verified["value"]
    assert outcome.ok, outcome.message
    assert outcome.up_to_seq in (head, head + 1)


SQLITE_SNAPSHOT = """
import json, sqlite3, threading
import django
django.setup()
from django.conf import settings
from django.core.management import call_command
from django.db import connections, transaction
from audit.verbs import Verb
from audit.models import AuditEvent, ChainHead
from audit.services import SYSTEM, audit_record
from audit.verify import chain_verify, verification_snapshot

def append():
    with transaction.atomic():
        return audit_record(verb=Verb.RUN_QUEUED, actor=SYSTEM, subject_type="run", subject_id=1)

call_command("migrate", verbosity=0)
for _ in range(3):
    append()
seen = {}
with verification_snapshot():
    seen["head_before"] = ChainHead.objects.get(pk=1).seq
    # A writer that will not wait: may it take the write lock now?
    probe = sqlite3.connect(settings.DATABASES["default"]["NAME"], timeout=0, isolation_level=None)
    try:
        probe.execute("BEGIN IMMEDIATE")
        probe.execute("ROLLBACK")
        seen["writer_free"] = True
    except sqlite3.OperationalError as exc:
        seen["writer_free"] = str(exc)
    probe.close()
    if seen["writer_free"] is True:
        writer = threading.Thread(target=lambda: (append(), connections.close_all()))
        writer.start()
        writer.join()
    seen["head_inside"] = ChainHead.objects.get(pk=1).seq
    seen["events_inside"] = AuditEvent.objects.count()
seen["head_after"] = ChainHead.objects.get(pk=1).seq
seen["verified"] = chain_verify().message
print(json.dumps(seen))
"""


def test_verification_on_sqlite_reads_a_snapshot_without_stalling_writers(
    tmp_path: Path,
) -> None:
    """The embedded console (SQLite): Django opens transactions IMMEDIATE, which would hold
    the write lock for the whole verification."""
    env = {k: v for k, v in child_env().items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(BATON_DATA_DIR=str(tmp_path), BATON_HTTPS="false", BATON_AGENT_MODULES="")
    done = subprocess.run(
        [sys.executable, "-c", SQLITE_SNAPSHOT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["writer_free"] is True
    assert (seen["head_before"], seen["head_inside"], seen["events_inside"]) == (3, 3, 3)
    assert seen["head_after"] == 4
    assert seen["verified"].startswith("chain intact up to #4")


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
                        verb=Verb.RUN_QUEUED,
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


# --- item 11: the badge cannot lie --------------------------------------------------------

FORGE = (
    "INSERT INTO audit_verification (started_at, finished_at, ok, up_to_seq, checkpoints, "
    "message) VALUES (now(), now() + interval '1 minute', true, %s, 1, 'chain intact')"
)


@pytest.mark.django_db
def test_a_verification_row_inserted_with_sql_never_turns_the_badge_green(world: Any) -> None:
    head = record(4)
    call_command("audit_checkpoint")
    call_command("audit_verify")
    assert f"Chain verified ✓ up to #{head}" in badge(world.compliance)
    as_superuser_without_triggers(
        "UPDATE audit_auditevent SET body = replace(body, 'run', 'nur') WHERE seq = %s",
        [head - 1],
    )
    with pytest.raises(CommandError):
        call_command("audit_verify")
    assert f"Chain BROKEN at #{head - 1}" in badge(world.compliance)
    # What anyone with the application's database role can do: insert a row.
    with connection.cursor() as cursor:
        cursor.execute(FORGE, [head])
    page = badge(world.compliance)
    assert "Chain verified" not in page
    assert VERIFICATION_UNPROVEN in page


@pytest.mark.django_db
def test_a_copied_signature_proves_nothing_but_its_own_outcome(world: Any) -> None:
    head = record(3)
    call_command("audit_verify")
    genuine = Verification.objects.get()
    with connection.cursor() as cursor:
        # The genuine signature over a later time and a longer chain.
        cursor.execute(
            "INSERT INTO audit_verification (started_at, finished_at, ok, up_to_seq, "
            "up_to_hash, first_bad_seq, checkpoints, message, key_id, signature) "
            "SELECT started_at, finished_at + interval '1 minute', ok, up_to_seq + 1, "
            "up_to_hash, first_bad_seq, checkpoints, message, key_id, signature "
            "FROM audit_verification WHERE id = %s",
            [genuine.pk],
        )
    page = badge(world.compliance)
    assert f"up to #{head + 1}" not in page and "Chain verified" not in page
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        Verification.objects.filter(pk=genuine.pk).update(ok=False)
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        Verification.objects.exclude(pk=genuine.pk).delete()


@pytest.mark.django_db
def test_a_verification_replayed_after_a_failure_leaves_the_badge_red(world: Any) -> None:
    record(3)
    call_command("audit_verify")
    as_superuser_without_triggers("UPDATE audit_auditevent SET body = body || ' ' WHERE seq = 2")
    with pytest.raises(CommandError):
        call_command("audit_verify")
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO audit_verification (started_at, finished_at, ok, up_to_seq, up_to_hash, "
            "first_bad_seq, checkpoints, message, key_id, signature) SELECT started_at, "
            "finished_at, ok, up_to_seq, up_to_hash, first_bad_seq, checkpoints, message, "
            "key_id, signature FROM audit_verification WHERE ok"
        )
    assert "Chain BROKEN at #2" in badge(world.compliance)


@pytest.mark.django_db
def test_an_old_verification_is_not_shown_as_verified(world: Any, settings: Any) -> None:
    head = record(2)
    call_command("audit_verify")
    assert f"Chain verified ✓ up to #{head}" in badge(world.compliance)
    settings.BATON_AUDIT_VERIFY_EVERY_SECONDS = 0  # every verification is now too old
    page = badge(world.compliance)
    assert "Chain verified" not in page
    assert "Not verified recently" in page


@pytest.mark.django_db
def test_a_verified_head_rewritten_afterwards_is_not_shown_as_verified(world: Any) -> None:
    head = record(3)
    call_command("audit_verify")
    as_superuser_without_triggers(
        "UPDATE audit_auditevent SET hash = repeat('a', 64) WHERE seq = %s", [head]
    )
    page = badge(world.compliance)
    assert "Chain verified" not in page
    assert VERIFICATION_MOVED in page


# --- item 13: verification never crashes, and trusts only signatures ---------------------


def checkpoint_file(audit_keys: Path) -> Path:
    return audit_keys / "checkpoints" / CHECKPOINT_FILE


MALFORMED_LINES = [
    "not json at all",
    "[1, 2, 3]",
    '{"seq": "eight", "hash": "h", "signed_at": "t", "key_id": "k", "signature": "s"}',
    '{"seq": true, "hash": "h", "signed_at": "t", "key_id": "k", "signature": "s"}',
    '{"seq": 3}',
    '{"seq": 3, "hash": 7, "signed_at": "t", "key_id": "k", "signature": "s"}',
    '{"seq": 1e400}',
]


@pytest.mark.parametrize("line", MALFORMED_LINES)
@pytest.mark.django_db
def test_a_malformed_line_in_the_checkpoint_file_is_a_named_failure(
    line: str, audit_keys: Path, django_capture_on_commit_callbacks: Any
) -> None:
    record(4)
    with django_capture_on_commit_callbacks(execute=True):
        checkpoint_sign()
    with checkpoint_file(audit_keys).open("a") as out:
        out.write(line + "\n")
    outcome, recorded = chain_verify_and_record()
    assert not outcome.ok
    assert "line 2 of the checkpoint file" in outcome.message
    assert (recorded.ok, recorded.message) == (False, outcome.message)
    with pytest.raises(CommandError, match="line 2 of the checkpoint file"):
        call_command("audit_verify")


@pytest.mark.django_db
def test_a_malformed_checkpoint_file_does_not_hide_an_edited_event(audit_keys: Path) -> None:
    record(5)
    checkpoint_file(audit_keys).parent.mkdir(parents=True)
    checkpoint_file(audit_keys).write_bytes(b"\xff\xfe not text\n")
    as_superuser_without_triggers(
        "UPDATE audit_auditevent SET body = replace(body, 'run', 'nur') WHERE seq = 3"
    )
    outcome = chain_verify()
    assert (outcome.ok, outcome.first_bad_seq) == (False, 3)
    assert "checkpoint file" in outcome.message and "#3 does not match" in outcome.message


@pytest.mark.django_db
def test_unreadable_trusted_keys_are_a_named_failure(settings: Any, tmp_path: Path) -> None:
    record(2)
    checkpoint_sign()
    settings.BATON_AUDIT_TRUSTED_KEYS_FILE = str(tmp_path / "missing.pem")
    outcome, recorded = chain_verify_and_record()
    assert not outcome.ok and not recorded.ok
    assert "the trusted keys cannot be read" in outcome.message


@pytest.mark.django_db
def test_keys_that_are_no_keys_are_named_failures_and_the_badge_still_renders(
    world: Any, settings: Any, tmp_path: Path
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    record(2)
    checkpoint_sign()
    other_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    (tmp_path / "ec.pem").write_bytes(other_pem)
    with pytest.raises(CommandError, match="not an Ed25519 public key"):
        call_command("audit_verify", public_key=tmp_path / "ec.pem")
    (tmp_path / "garbage.pem").write_text(
        "-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n"
    )
    with pytest.raises(CommandError, match="cannot read the public key"):
        call_command("audit_verify", public_key=tmp_path / "garbage.pem")
    settings.BATON_AUDIT_TRUSTED_KEYS_FILE = str(tmp_path / "garbage.pem")
    outcome, _ = chain_verify_and_record()
    assert "the trusted keys cannot be read" in outcome.message
    settings.BATON_AUDIT_TRUSTED_KEYS_FILE = ""
    broken = tmp_path / "broken_signing_key.pem"
    broken.write_text("not a key")
    settings.BATON_AUDIT_SIGNING_KEY_FILE = str(broken)
    signing_key.cache_clear()
    outcome, recorded = chain_verify_and_record()
    assert not outcome.ok and "does not hold a PEM private key" in outcome.message
    assert recorded.signature == ""
    page = badge(world.compliance)
    assert "Chain verified" not in page and VERIFICATION_UNPROVEN in page


@pytest.mark.django_db
def test_a_deleted_chain_head_is_detected_and_the_application_cannot_delete_it() -> None:
    record(3)
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        ChainHead.objects.all().delete()
    assert chain_verify().ok
    as_superuser_without_triggers("DELETE FROM audit_chainhead")
    outcome = chain_verify()
    assert (outcome.ok, outcome.first_bad_seq) == (False, 4)
    assert "the chain head is missing" in outcome.message


def plant(seq: int, head_hash: str, *, signer: Ed25519PrivateKey | None, key: str) -> None:
    """What the application's database role can do: insert a checkpoint row."""
    from audit.chain import checkpoint_message

    signed_at = "2026-11-30T12:00:00.000000Z"
    signature = (
        signer.sign(checkpoint_message(seq, head_hash, signed_at)).hex() if signer else "ab" * 64
    )
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO audit_checkpoint (seq, hash, signed_at, key_id, signature) "
            "VALUES (%s, %s, %s, %s, %s)",
            [seq, head_hash, signed_at, key, signature],
        )


@pytest.mark.django_db
def test_a_planted_checkpoint_is_not_trusted_anywhere(
    world: Any, django_capture_on_commit_callbacks: Any
) -> None:
    from audit.tasks import checkpoint

    head = record(3)
    genuine = checkpoint_sign()
    assert genuine is not None
    more = record(2)
    head_hash = AuditEvent.objects.get(seq=more).hash
    # Under our key id with another key, and at the head, so it would stand in for one.
    plant(more, head_hash, signer=Ed25519PrivateKey.generate(), key=genuine.key_id)
    plant(more + 5, "e" * 64, signer=None, key="0123456789abcdef")
    outcome = chain_verify()
    assert not outcome.ok
    assert "bad signature" in outcome.message and "unknown key" in outcome.message
    page = badge(world.compliance)
    assert f"last checkpoint #{head}" in page and f"last checkpoint #{more}" not in page
    plan = export_plan(Q(), up_to=more)
    assert [c.pk for c in plan.checkpoints] == [genuine.pk] and plan.to_seq == more
    with django_capture_on_commit_callbacks(execute=True):
        assert checkpoint() == more  # the scheduled checkpoint is not skipped
    assert Checkpoint.objects.filter(seq=more, key_id=genuine.key_id).count() == 2


@pytest.mark.django_db
def test_a_checkpoint_planted_in_the_directory_is_not_trusted(audit_keys: Path) -> None:
    from audit.chain import checkpoint_message

    record(3)
    genuine = checkpoint_sign()
    assert genuine is not None
    forger = Ed25519PrivateKey.generate()
    # A head that claims a longer chain: trusted, it would say the tail was cut.
    forged = {
        "seq": 9,
        "hash": "f" * 64,
        "signed_at": genuine.signed_at,
        "key_id": genuine.key_id,
        "signature": forger.sign(checkpoint_message(9, "f" * 64, genuine.signed_at)).hex(),
    }
    checkpoint_file(audit_keys).parent.mkdir(parents=True, exist_ok=True)
    with checkpoint_file(audit_keys).open("a") as out:
        out.write(json.dumps(forged) + "\n")
    outcome = chain_verify()
    assert not outcome.ok
    assert "checkpoint #9" in outcome.message and "bad signature" in outcome.message
    assert "removed from the end" not in outcome.message


# --- item 12: what is shown is what is proven ---------------------------------------------

REDEFINED = {
    # column: (its type, a definition that lies about #3)
    "verb": ("varchar(40)", "'approval.approved'"),
    "agent_id": ("bigint", "424242"),
    "occurred_at": ("varchar(32)", "'2020-01-01T00:00:00.000000Z'"),
    "actor_label": ("varchar(150)", "'someone else'"),
}


@pytest.mark.parametrize("column", sorted(REDEFINED))
@pytest.mark.django_db
def test_a_redefined_column_fails_verification_naming_the_seq_and_the_column(
    column: str,
) -> None:
    record(5)
    checkpoint_sign()
    kind, lie = REDEFINED[column]
    honest = f"(body::jsonb ->> '{column}')"
    if kind == "bigint":
        honest = f"(NULLIF(body::jsonb ->> '{column}', 'null'))::bigint"
    with connection.cursor() as cursor:
        # What an owner of the schema can do; no trigger fires, no hash changes.
        cursor.execute(f"ALTER TABLE audit_auditevent DROP COLUMN {column}")
        cursor.execute(
            f"ALTER TABLE audit_auditevent ADD COLUMN {column} {kind} GENERATED ALWAYS AS "
            f"(CASE WHEN seq = 3 THEN {lie} ELSE {honest} END) STORED"
        )
    shown = AuditEvent.objects.filter(seq=3).values_list(column, flat=True).get()
    assert str(shown) != str(AuditEvent.objects.get(seq=3).content[column])  # the page lies
    outcome = chain_verify()
    assert (outcome.ok, outcome.first_bad_seq) == (False, 3)
    assert f"#3 shows a {column} its canonical bytes do not hold" in outcome.message
    with pytest.raises(CommandError, match=f"first bad seq 3: #3 shows a {column}"):
        call_command("audit_verify")


@pytest.mark.django_db
def test_a_dropped_column_is_a_recorded_failure_not_a_traceback() -> None:
    record(3)
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE audit_auditevent DROP COLUMN verb")
    outcome, recorded = chain_verify_and_record()
    assert not outcome.ok and not recorded.ok
    assert "verification could not complete" in outcome.message and "verb" in outcome.message
    with pytest.raises(CommandError, match="verification could not complete"):
        call_command("audit_verify")


@pytest.mark.django_db
def test_the_columns_of_real_events_agree_with_their_bytes(world: Any) -> None:
    """Every kind of value the columns hold (null and set ids, labels with non-ASCII and
    quotes) passes the check the other way round."""
    with transaction.atomic():
        audit_record(
            verb=Verb.RUN_QUEUED,
            actor=SYSTEM,
            subject_type="run",
            subject_id='7 "quoted" naïve ✓',
            payload={"verb": "not the verb", "agent_id": 1, "nested": {"a": [1, None]}},
        )
    outcome = chain_verify()
    assert outcome.ok, outcome.message
