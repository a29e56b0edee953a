"""The trail is append-only in the database, and any change made around that — by a
superuser with triggers off, by cutting the tail, by forging a checkpoint — is caught by
verification, which names the first bad sequence number."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, connections, transaction

from audit.chain import GENESIS
from audit.models import AuditEvent, ChainHead, Checkpoint, Verification
from audit.services import SYSTEM, audit_record
from audit.signing import checkpoint_sign, key_id, outside_checkpoints, public_pem
from audit.verbs import Verb
from audit.verify import chain_verify
from tests.conftest import ROOT, chained, child_env, db_url


def record(n: int, *, what: str = "x") -> list[int]:
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
                        payload={"what": what, "i": i, "amount": 1e20, "note": "naïve ✓"},
                    )
                )
            )
    return seqs


def as_superuser_without_triggers(sql: str, params: tuple[Any, ...] = ()) -> None:
    """What an attacker holding the database superuser can do: switch triggers off."""
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL session_replication_role = replica")
        cursor.execute(sql, params)
        cursor.execute("SET LOCAL session_replication_role = origin")


@pytest.mark.django_db
def test_a_fresh_chain_verifies_and_numbers_survive_the_round_trip() -> None:
    record(5)
    checkpoint_sign()
    outcome = chain_verify()
    assert outcome.ok, outcome.message
    assert outcome.up_to_seq == 5
    assert AuditEvent.objects.get(seq=3).payload["amount"] == 1e20


@pytest.mark.django_db
def test_the_application_cannot_update_delete_or_truncate_events() -> None:
    record(2)
    event = AuditEvent.objects.get(seq=1)
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(seq=1).update(body="{}")
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(seq=2).delete()
    with (
        pytest.raises(DatabaseError, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        # The suite's own flush is the one session allowed to truncate; be the application.
        cursor.execute("SET LOCAL baton.test_flush = 'off'")
        cursor.execute("TRUNCATE audit_auditevent")
    checkpoint_sign()
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        Checkpoint.objects.update(hash=GENESIS)
    assert AuditEvent.objects.get(seq=1).body == event.body
    assert AuditEvent.objects.count() == 2
    assert chain_verify().ok


@pytest.mark.django_db
def test_an_event_edited_with_triggers_off_is_named_by_its_seq() -> None:
    record(6)
    as_superuser_without_triggers(
        "UPDATE audit_auditevent SET body = replace(body, '\"i\":3', '\"i\":33') WHERE seq = 4"
    )
    assert AuditEvent.objects.get(seq=4).payload["i"] == 33  # the edit took
    outcome = chain_verify()
    assert not outcome.ok
    assert outcome.first_bad_seq == 4
    with pytest.raises(CommandError, match="first bad seq 4"):
        call_command("audit_verify")
    assert Verification.objects.latest("finished_at").first_bad_seq == 4


@pytest.mark.django_db
def test_an_edit_with_its_hash_recomputed_breaks_the_next_link() -> None:
    from audit.chain import chain_hash

    record(4)
    victim = AuditEvent.objects.get(seq=2)
    forged = victim.body.replace('"i":1', '"i":9')
    as_superuser_without_triggers(
        "UPDATE audit_auditevent SET body = %s, hash = %s WHERE seq = 2",
        (forged, chain_hash(victim.prev_hash, 2, forged.encode())),
    )
    outcome = chain_verify()
    assert (outcome.ok, outcome.first_bad_seq) == (False, 3)


@pytest.mark.django_db
def test_a_removed_event_in_the_middle_is_a_gap() -> None:
    record(5)
    as_superuser_without_triggers("DELETE FROM audit_auditevent WHERE seq = 3")
    outcome = chain_verify()
    assert (outcome.ok, outcome.first_bad_seq) == (False, 3)
    assert "missing" in outcome.message


@pytest.mark.django_db
def test_a_cut_tail_with_the_head_rewound_is_caught_by_the_last_checkpoint(
    django_capture_on_commit_callbacks: Any,
) -> None:
    record(8)
    with django_capture_on_commit_callbacks(execute=True):
        checkpoint_sign()
    # Cut #6..#8, rewind the head to #5, and drop the checkpoint row as well: the copy
    # kept outside the database still covers #8.
    kept = AuditEvent.objects.get(seq=5)
    as_superuser_without_triggers("DELETE FROM audit_auditevent WHERE seq > 5")
    as_superuser_without_triggers("DELETE FROM audit_checkpoint")
    ChainHead.objects.filter(pk=1).update(seq=5, hash=kept.hash)
    assert [c.seq for c in outside_checkpoints()] == [8]
    outcome = chain_verify()
    assert not outcome.ok
    assert outcome.first_bad_seq == 6
    assert "removed from the end" in outcome.message


@pytest.mark.django_db
def test_a_rewound_head_without_a_checkpoint_is_still_caught_by_the_head() -> None:
    record(4)
    ChainHead.objects.filter(pk=1).update(seq=2, hash=AuditEvent.objects.get(seq=2).hash)
    outcome = chain_verify()
    assert (outcome.ok, outcome.first_bad_seq) == (False, 3)


@pytest.mark.django_db
def test_a_checkpoint_with_a_bad_signature_fails() -> None:
    record(3)
    checkpoint = checkpoint_sign()
    assert checkpoint is not None
    flipped = ("0" if checkpoint.signature[0] != "0" else "1") + checkpoint.signature[1:]
    as_superuser_without_triggers(
        "UPDATE audit_checkpoint SET signature = %s WHERE id = %s", (flipped, checkpoint.pk)
    )
    outcome = chain_verify(keys=None, extra_checkpoints=())
    assert not outcome.ok
    assert "bad signature" in outcome.message


@pytest.mark.django_db
def test_a_checkpoint_is_refused_under_the_wrong_key(tmp_path: Path) -> None:
    record(3)
    checkpoint_sign()
    stranger = Ed25519PrivateKey.generate().public_key()
    outcome = chain_verify(keys={key_id(stranger): stranger})
    assert not outcome.ok
    assert "unknown key" in outcome.message
    pem = tmp_path / "stranger.pem"
    pem.write_bytes(public_pem(stranger))
    with pytest.raises(CommandError, match="unknown key"):
        call_command("audit_verify", public_key=pem)


@pytest.mark.django_db
def test_a_checkpoint_forged_with_another_key_under_our_key_id_fails() -> None:
    from audit.chain import checkpoint_message

    record(2)
    real = checkpoint_sign()
    assert real is not None
    forger = Ed25519PrivateKey.generate()
    forged = forger.sign(checkpoint_message(real.seq, real.hash, real.signed_at)).hex()
    as_superuser_without_triggers(
        "UPDATE audit_checkpoint SET signature = %s WHERE id = %s", (forged, real.pk)
    )
    assert "bad signature" in chain_verify().message


@pytest.mark.django_db
def test_scheduled_checkpoints_sign_only_when_the_chain_moved(
    django_capture_on_commit_callbacks: Any,
) -> None:
    from audit.tasks import checkpoint

    record(2)
    with django_capture_on_commit_callbacks(execute=True):
        assert checkpoint() == 2
        assert checkpoint() is None
        record(1)
        assert checkpoint() == 3
    assert [c.seq for c in outside_checkpoints()] == [2, 3]
    assert chain_verify().checkpoints == 2  # each once, though kept inside and outside


@pytest.mark.django_db(transaction=True)
def test_eight_concurrent_writers_leave_no_fork_and_no_gap() -> None:
    stop = time.monotonic() + 4
    written: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def writer(n: int) -> None:
        try:
            mine = []
            while time.monotonic() < stop:
                with transaction.atomic():
                    mine.append(
                        chained(
                            audit_record(
                                verb=Verb.RUN_QUEUED,
                                actor=SYSTEM,
                                subject_type="run",
                                subject_id=n,
                                payload={"writer": n},
                            )
                        )
                    )
            with lock:
                written.extend(mine)
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(written) > 200
    assert sorted(written) == list(range(1, len(written) + 1))  # every seq once, none skipped
    assert AuditEvent.objects.count() == len(written)
    assert ChainHead.objects.get(pk=1).seq == len(written)
    outcome = chain_verify()
    assert outcome.ok, outcome.message
    assert outcome.up_to_seq == len(written)


@pytest.mark.django_db(transaction=True)
def test_the_command_exits_non_zero_naming_the_seq() -> None:
    record(3)

    def audit_verify() -> subprocess.CompletedProcess[str]:
        # child_env carries this test's audit key and checkpoint directory.
        return subprocess.run(
            [sys.executable, "manage.py", "audit_verify"],
            cwd=ROOT,
            env=child_env(DATABASE_URL=db_url()),
            capture_output=True,
            text=True,
            timeout=60,
        )

    checkpoint_sign()
    done = audit_verify()
    assert done.returncode == 0, done.stderr
    assert "audit chain OK" in done.stdout
    with psycopg.connect(db_url(), autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("UPDATE audit_auditevent SET body = replace(body, 'x', 'y') WHERE seq = 2")
    done = audit_verify()
    assert done.returncode != 0
    assert "first bad seq 2" in done.stderr


@pytest.mark.django_db(transaction=True)
def test_the_readme_role_can_append_and_read_but_never_rewrite_the_trail() -> None:
    """The README's SQL for the application's role, run as written."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## The audit trail") :]
    block = section[
        section.index("```sql") + len("```sql") : section.index("```", section.index("```sql") + 6)
    ]
    statements = [
        line for line in block.splitlines() if line.strip() and not line.strip().startswith("--")
    ]
    role = f"baton_app_{uuid.uuid4().hex[:8]}"
    sql = "\n".join(statements).replace("baton_app", role).replace("'...'", "'pw'")
    record(1)
    with psycopg.connect(db_url(), autocommit=True) as owner:
        owner.execute(sql)
        try:
            app = psycopg.connect(db_url().replace("postgres@", f"{role}:pw@", 1), autocommit=True)
            with app:
                from audit.chain import canonical_content
                from audit.sequencer import SEQUENCE_SQL
                from audit.services import APPEND_SQL, event_content

                content = event_content(
                    verb=Verb.RUN_QUEUED, actor=SYSTEM, subject_type="run", subject_id=9
                )
                with app.transaction():
                    app.execute(APPEND_SQL, {"canonical": canonical_content(content)})
                # Queued; chained by the sequencer's function, which runs as the owner.
                with app.transaction():
                    app.execute(SEQUENCE_SQL, {"limit": 10})
                counted = app.execute("SELECT count(*) FROM audit_auditevent").fetchone()
                assert counted is not None and counted[0] == 2
                # It keeps partitions ahead (the function runs as the trail's owner).
                app.execute("SELECT baton_audit_partitions_ahead()")
                for attempt in (
                    "UPDATE audit_auditevent SET body = body",
                    "DELETE FROM audit_auditevent",
                    "TRUNCATE audit_auditevent",
                    "UPDATE audit_verification SET ok = true",
                    "DELETE FROM audit_verification",
                    "DELETE FROM audit_chainhead",
                    "TRUNCATE audit_chainhead",
                    "INSERT INTO audit_auditevent (seq, body, prev_hash, hash)"
                    " VALUES (99, '{}', '', '')",
                    "UPDATE audit_pendingevent SET body = body",
                    "DELETE FROM audit_pendingevent",
                    "TRUNCATE audit_pendingevent",
                    "SET session_replication_role = replica",
                    "ALTER TABLE audit_auditevent DISABLE TRIGGER USER",
                    # A partition named directly: its grants came with ALL TABLES, the
                    # triggers refuse all the same, and it cannot be detached.
                    "UPDATE audit_auditevent_p000000000001 SET body = body",
                    "DELETE FROM audit_auditevent_p000000000001",
                    "TRUNCATE audit_auditevent_p000000000001",
                    "TRUNCATE audit_auditevent_default",
                    "ALTER TABLE audit_auditevent DETACH PARTITION audit_auditevent_default",
                ):
                    with pytest.raises(psycopg.errors.InsufficientPrivilege):
                        app.execute(attempt)
        finally:
            owner.execute(f"DROP OWNED BY {role}")
            owner.execute(f"DROP ROLE {role}")
    assert chain_verify().ok
