"""Verification of the chain in the database against its checkpoints (DESIGN section 7).

Recomputes every event's hash from its stored canonical bytes, checks each link and that
sequence numbers have no gap, checks every checkpoint's signature with a trusted key and
that the chain passes through the signed (seq, hash), and names the first bad sequence
number. Tamper-evident, not tamper-proof: it tells that and where history was changed.

Two extents. A full run walks from the genesis: its cost grows with the trail. An
incremental run (the scheduled one, `chain_verify_scheduled`) goes on from the head that
the newest signed outcome proved intact, (up_to_seq, up_to_hash), so it costs what the
new events cost: it re-reads that one event and requires its recomputed hash to be the
proven one, walks from there to the head checking every link, every new checkpoint's
signature, the chain head, a cut tail and the shown columns of the new rows; and it looks
up, one indexed read each, whether every earlier checkpoint still names its event's hash.

What an incremental run cannot see: it does not re-read the verified stretch. Someone who
holds the database (but not the signing key) and edits an old event's bytes, leaving the
stored hashes alone, or rewrites a stretch of hashes that ends before the next checkpoint,
is caught only by the next full run; a rewrite that passes a checkpoint or reaches the
start event is caught by the next incremental run. So the scheduled task runs in full once
every BATON_AUDIT_FULL_VERIFY_EVERY_SECONDS (a day by default), decided by the signed
outcomes themselves, and `audit_verify` and the page's *Verify now* always run in full.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from django.conf import settings
from django.db import connection, models, transaction
from django.utils import timezone

from audit.chain import GENESIS, format_time
from audit.models import AuditEvent, ChainHead, Checkpoint, Verification
from audit.signing import (
    SignedHead,
    SigningKeyError,
    checkpoint_trusted,
    head_trusted,
    key_id,
    read_outside_checkpoints,
    signing_key,
    trusted_keys,
    verification_message,
)

log = logging.getLogger(__name__)

VERIFICATION_UNPROVEN = "Unverified: the latest verification record is not signed by a trusted key."
VERIFICATION_STALE = "Not verified recently: the last verification is older than {age}."
VERIFICATION_MOVED = "Unverified: the chain no longer holds the head that was verified."
BADGE_CHECKPOINTS = 50  # the newest checkpoints the badge looks through for a signed one
# The newest outcomes a run looks through for a signed one to start from: anyone who can
# write the table can add unsigned rows, and they must not make the search grow. Past
# this many, the run starts from the genesis (slower, never wrong).
START_CANDIDATES = 50
LOOKUP_CHUNK = 5000  # seqs per query when the checkpoint file's are looked up


@dataclass
class Outcome:
    ok: bool = True
    up_to_seq: int = 0
    up_to_hash: str = ""  # the hash of #up_to_seq, when the chain is intact
    first_bad_seq: int | None = None
    checkpoints: int = 0
    problems: list[str] = field(default_factory=list)
    # None for a full run; else the seq it went on from, proven by the outcome signed at
    # `since`, so #from_seq..#up_to_seq were recomputed by this run.
    from_seq: int | None = None
    since: str = ""

    def fail(self, seq: int | None, problem: str) -> None:
        earlier = seq is not None and (self.first_bad_seq is None or seq < self.first_bad_seq)
        if self.ok or earlier:
            self.first_bad_seq = seq
        self.ok = False
        self.problems.append(problem)

    @property
    def message(self) -> str:
        if self.ok and self.from_seq is None:
            return f"chain intact up to #{self.up_to_seq}; {self.checkpoints} checkpoints verified"
        if self.ok:
            return (
                f"chain intact up to #{self.up_to_seq}; #{self.from_seq}..#{self.up_to_seq} "
                f"recomputed, going on from the signed verification of {self.since}; "
                f"{self.checkpoints} new checkpoints verified, every earlier one still "
                "matches its event"
            )
        where = f"first bad seq {self.first_bad_seq}: " if self.first_bad_seq else ""
        return where + "; ".join(self.problems[:5])


# Every column the pages, filters and exports read besides the body: each must say what
# the canonical bytes say. They are generated from the body, but whoever can run DDL can
# redefine one (ALTER TABLE), and then the pages would show what the chain does not prove.
SHOWN_COLUMNS = tuple(
    f.name for f in AuditEvent._meta.concrete_fields if isinstance(f, models.GeneratedField)
)
_NUMBERS = frozenset(
    f.name
    for f in AuditEvent._meta.concrete_fields
    if isinstance(f, models.GeneratedField) and isinstance(f.output_field, models.IntegerField)
)


def _disagreeing_column_sql() -> str:
    """SQL naming the first shown column that differs from its key in the body (NULL when
    all agree). Its own reading of the body (json_to_record, every value as text), not the
    columns' definitions, which are what it checks."""
    record = ", ".join(f"{name} text" for name in SHOWN_COLUMNS)
    cases = " ".join(
        f"WHEN e.{name}{'::text' if name in _NUMBERS else ''} IS DISTINCT FROM r.{name} "
        f"THEN '{name}'"
        for name in SHOWN_COLUMNS
    )
    return f"CASE {cases} END FROM audit_auditevent e, json_to_record(e.body::json) AS r({record})"


def _disagreeing_column(body: str, shown: tuple[Any, ...]) -> str | None:
    """The same check in Python, for SQLite."""
    try:
        content = json.loads(body)
    except ValueError:
        return SHOWN_COLUMNS[0]
    for name, value in zip(SHOWN_COLUMNS, shown, strict=True):
        held = content.get(name) if isinstance(content, dict) else None
        if _as_text(value) != _as_text(held):
            return name
    return None


def _as_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)


def _rows(begin: int = 0) -> Generator[tuple[int, str, str, str, str | None], None, None]:
    """(seq, prev_hash, hash, body, the first shown column that disagrees with the body or
    None) in seq order from #begin, streamed."""
    if connection.vendor == "postgresql":
        # psycopg's own COPY: streamed, never a result set held in memory. The server
        # reads the columns against the body while this process hashes.
        where = f" WHERE e.seq >= {int(begin)}" if begin else ""
        copy_sql = (
            "COPY (SELECT e.seq, e.prev_hash, e.hash, e.body, "
            f"{_disagreeing_column_sql()}{where} ORDER BY e.seq) TO STDOUT (FORMAT BINARY)"
        )
        with connection.cursor() as cursor, cursor.cursor.copy(copy_sql) as copy:
            copy.set_types(["int8", "text", "text", "text", "text"])
            yield from copy.rows()
        return
    rows = (
        AuditEvent.objects.filter(seq__gte=begin)
        .order_by("seq")
        .values_list("seq", "prev_hash", "hash", "body", *SHOWN_COLUMNS)
        .iterator(chunk_size=5000)
    )
    for seq, prev_hash, stored, body, *shown in rows:
        yield seq, prev_hash, stored, body, _disagreeing_column(body, tuple(shown))


@contextmanager
def verification_snapshot() -> Iterator[None]:
    """One consistent view of the events, the checkpoints and the chain head. Read one by
    one at READ COMMITTED, a writer committing in between made an intact trail look cut
    ("the chain head says #N but the events end at #N-1")."""
    if connection.in_atomic_block:
        # Inside a caller's transaction (the test suite's), its view is the one there is;
        # a savepoint keeps that transaction usable if reading fails.
        with transaction.atomic():
            yield
        return
    if connection.vendor == "sqlite":
        # Django opens SQLite transactions IMMEDIATE, which takes the write lock; a deferred
        # one reads one snapshot of the WAL from its first read and blocks no writer.
        with connection.cursor() as cursor:
            cursor.execute("BEGIN DEFERRED")
            try:
                yield
            finally:
                cursor.execute("ROLLBACK")  # it wrote nothing
        return
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield


def chain_verify(
    *,
    keys: dict[str, Ed25519PublicKey] | None = None,
    extra_checkpoints: Iterable[SignedHead] = (),
    incremental: bool = False,
) -> Outcome:
    """Verify the chain, in full (from the genesis) or, with `incremental`, on from the
    head the newest signed outcome proved (from the genesis when there is none to trust)."""
    outcome = Outcome()
    if keys is None:
        try:
            keys = trusted_keys()
        except (SigningKeyError, OSError, ValueError) as exc:
            outcome.fail(None, f"the trusted keys cannot be read: {exc}")
            keys = {}
    # The file first: each of its checkpoints was committed before it was written there,
    # so the snapshot taken next holds every event it covers.
    outside, problems = read_outside_checkpoints()
    for problem in problems:
        outcome.fail(None, problem)
    with verification_snapshot():
        start = verification_start(keys) if incremental else None
        return _verify(outcome, keys, [*outside, *extra_checkpoints], start)


def verification_start(keys: dict[str, Ed25519PublicKey]) -> Verification | None:
    """Where an incremental run may begin: the newest outcome a trusted key signed, when
    it found the chain intact up to a head other than the genesis. None when that newest
    signed outcome is a failure (a run must not go on past a known break as if it had
    not been found) or when none of the newest START_CANDIDATES rows is signed."""
    return _newest_proven(
        Verification.objects.all(),
        keys,
        lambda row: bool(row.ok and row.up_to_seq > 0 and row.up_to_hash),
    )


def _newest_proven(
    rows: models.QuerySet[Verification],
    keys: dict[str, Ed25519PublicKey],
    usable: Callable[[Verification], bool] = lambda row: True,
) -> Verification | None:
    newest = rows.filter(key_id__in=list(keys)).exclude(signature="")
    for row in newest.order_by("-finished_at", "-id")[:START_CANDIDATES]:
        if verification_proven(row, keys):
            return row if usable(row) else None
    return None


def _verify(
    outcome: Outcome,
    keys: dict[str, Ed25519PublicKey],
    more: list[SignedHead],
    start: Verification | None = None,
) -> Outcome:
    begin = start.up_to_seq if start is not None else 0
    stored = Checkpoint.objects.order_by("seq")
    if start is not None:
        outcome.from_seq, outcome.since = begin, format_time(start.finished_at)
        # The earlier ones had their signatures checked by the runs that covered them.
        _earlier_checkpoints_hold(outcome, keys, begin, [c for c in more if c.seq <= begin])
        stored = stored.filter(seq__gt=begin)
        more = [c for c in more if c.seq > begin]
    signed = [SignedHead.of(c) for c in stored]
    # The copies outside the database repeat those inside; each checkpoint counts once.
    signed = list(dict.fromkeys([*signed, *more]))
    expected: dict[int, str] = {}
    for checkpoint in signed:
        problem = head_trusted(checkpoint, keys)
        if problem:
            outcome.fail(checkpoint.seq or None, problem)
            continue
        if expected.setdefault(checkpoint.seq, checkpoint.hash) != checkpoint.hash:
            outcome.fail(checkpoint.seq, f"two signed checkpoints disagree at #{checkpoint.seq}")
    outcome.checkpoints = len(signed)
    if 0 in expected and expected[0] != GENESIS:
        outcome.fail(1, "a checkpoint of the empty chain does not hold the genesis hash")

    prev, want = GENESIS, 1
    bad: tuple[int, str] | None = None
    with closing(_rows(begin)) as rows:
        if start is not None:
            bad = _start_holds(next(rows, None), start)
            prev, want = start.up_to_hash, begin + 1
        if bad is None:
            prev, want, bad = _walk(rows, prev, want, expected)
    if bad:
        outcome.fail(*bad)
        want = min(want, bad[0])
    last = want - 1
    if bad is None:
        beyond = [s for s in expected if s > last]
        if beyond:
            outcome.fail(
                last + 1,
                f"the chain ends at #{last} but a checkpoint covers #{max(beyond)}: "
                "events were removed from the end",
            )
        head = ChainHead.objects.filter(pk=1).first()
        if head is None and last > 0:
            # Every later append would fail: it restarts the head at #0, and #1 exists.
            outcome.fail(last + 1, f"the chain head is missing; the events end at #{last}")
        elif head is not None and (head.seq, head.hash) != (last, prev):
            outcome.fail(
                min(head.seq, last) + 1,
                f"the chain head says #{head.seq} but the events end at #{last}",
            )
    outcome.up_to_seq = last if outcome.ok else min(last, (outcome.first_bad_seq or 1) - 1)
    if outcome.ok:
        outcome.up_to_hash = prev
    return outcome


def _walk(
    rows: Iterator[tuple[int, str, str, str, str | None]],
    prev: str,
    want: int,
    expected: dict[int, str],
) -> tuple[str, int, tuple[int, str] | None]:
    """Walk on from #want (whose predecessor's hash is prev) to the last row; stop at the
    first break, whatever else was found before it. Returns the last hash, the seq after
    it, and the break."""
    sha256 = hashlib.sha256  # the hot loop: _link's work, inlined
    for seq, prev_hash, held, body, disagreeing in rows:
        if seq != want:
            return prev, want, (want, f"events #{want}..#{seq - 1} are missing")
        if prev_hash != prev:
            return prev, want, (seq, f"#{seq} does not link to the event before it")
        content_digest = sha256(body.encode()).hexdigest()
        if sha256(f"{prev}\n{seq}\n{content_digest}".encode()).hexdigest() != held:
            return prev, want, (seq, f"#{seq} does not match its hash: its content was changed")
        if seq in expected and expected[seq] != held:
            return prev, want, (seq, f"#{seq} differs from the checkpoint signed at #{seq}")
        if disagreeing:
            return (
                prev,
                want,
                (seq, f"#{seq} shows a {disagreeing} its canonical bytes do not hold"),
            )
        prev, want = held, seq + 1
    return prev, want, None


def _link(prev: str, seq: int, body: str) -> str:
    sha256 = hashlib.sha256
    return sha256(f"{prev}\n{seq}\n{sha256(body.encode()).hexdigest()}".encode()).hexdigest()


def _start_holds(
    row: tuple[int, str, str, str, str | None] | None, start: Verification
) -> tuple[int, str] | None:
    """The event an incremental run goes on from must still be the one the earlier outcome
    proved: its bytes hash, with its own link, to the signed up_to_hash (which covers that
    link, so the chain before it is the one that was verified)."""
    seq = start.up_to_seq
    proven = f"the verification of {format_time(start.finished_at)} proved"
    if row is None or row[0] != seq:
        return seq, f"#{seq}, which {proven} intact, is missing"
    _, prev_hash, held, body, disagreeing = row
    if held != start.up_to_hash or _link(prev_hash, seq, body) != held:
        return seq, f"#{seq} no longer holds the hash {proven}: it was changed"
    if disagreeing:
        return seq, f"#{seq} shows a {disagreeing} its canonical bytes do not hold"
    return None


def _earlier_checkpoints_hold(
    outcome: Outcome, keys: dict[str, Ed25519PublicKey], begin: int, outside: list[SignedHead]
) -> None:
    """Every checkpoint at or before #begin still names its event's stored hash: one
    indexed look-up each, in one query for the table's (the checkpoint file's are looked
    up by seq). A rewrite of the verified stretch that recomputed hashes changes the hash
    at every checkpoint it passes; one that only edits bytes does not (the full run)."""
    with connection.cursor() as cursor:
        cursor.execute(
            # A correlated look-up, not a join: a join may be planned as a scan of the
            # whole trail, which is what this run exists not to do.
            "SELECT c.seq, c.hash, c.signed_at, c.key_id, c.signature FROM audit_checkpoint c "
            "WHERE c.seq <= %s AND COALESCE((SELECT e.hash FROM audit_auditevent e "
            "WHERE e.seq = c.seq), CASE WHEN c.seq = 0 THEN %s END, '') <> c.hash",
            [begin, GENESIS],
        )
        off = [SignedHead(*row) for row in cursor.fetchall()]
    seqs = sorted({c.seq for c in outside})
    held: dict[int, str] = {0: GENESIS}
    for i in range(0, len(seqs), LOOKUP_CHUNK):
        chunk = seqs[i : i + LOOKUP_CHUNK]
        held.update(AuditEvent.objects.filter(seq__in=chunk).values_list("seq", "hash"))
    off += [c for c in outside if held.get(c.seq) != c.hash]
    for checkpoint in dict.fromkeys(off):
        # A planted one is named as such, as the full run names it; a signed one that the
        # chain no longer passes through means the verified stretch was rewritten.
        problem = head_trusted(checkpoint, keys) or (
            f"#{checkpoint.seq} differs from the checkpoint signed at #{checkpoint.seq}"
        )
        outcome.fail(checkpoint.seq or None, problem)


def verification_record(outcome: Outcome, started_at: datetime) -> Verification:
    """Keep the outcome for the integrity badge (not part of the trail itself), signed with
    the audit signing key when there is one: an unsigned row is never shown as an outcome."""
    row = Verification(
        started_at=started_at,
        finished_at=timezone.now(),
        ok=outcome.ok,
        up_to_seq=outcome.up_to_seq,
        up_to_hash=outcome.up_to_hash if outcome.ok else "",
        first_bad_seq=outcome.first_bad_seq,
        checkpoints=outcome.checkpoints,
        message=outcome.message,
        from_seq=outcome.from_seq,
    )
    try:
        private = signing_key()
    except SigningKeyError:
        private = None  # recorded unsigned; the badge shows it as unverified
    if private is not None:
        row.key_id = key_id(private.public_key())
        row.signature = private.sign(_signed_text(row)).hex()
    row.save()
    return row


def _signed_text(row: Verification) -> bytes:
    return verification_message(
        ok=row.ok,
        up_to_seq=row.up_to_seq,
        up_to_hash=row.up_to_hash,
        first_bad_seq=row.first_bad_seq,
        checkpoints=row.checkpoints,
        finished_at=format_time(row.finished_at),
        message=row.message,
        from_seq=row.from_seq,
    )


def chain_verify_and_record(
    *, keys: dict[str, Ed25519PublicKey] | None = None, incremental: bool = False
) -> tuple[Outcome, Verification]:
    started_at = timezone.now()
    try:
        outcome = chain_verify(keys=keys, incremental=incremental)
    except Exception as exc:  # noqa: BLE001 - whatever stops it, the outcome is recorded
        log.exception("audit verification could not complete")
        outcome = Outcome()
        outcome.fail(None, f"verification could not complete: {type(exc).__name__}: {exc}")
    return outcome, verification_record(outcome, started_at)


def chain_verify_scheduled() -> tuple[Outcome, Verification]:
    """What beat runs: incremental, in full when a full run is due."""
    return chain_verify_and_record(incremental=not full_verification_due())


def full_verification_due() -> bool:
    """Whether no signed full run finished within BATON_AUDIT_FULL_VERIFY_EVERY_SECONDS.
    Decided by signed outcomes only: rows anyone can insert cannot put the full run off."""
    try:
        keys = trusted_keys()
    except (SigningKeyError, OSError, ValueError):
        return True  # the run names the error
    newest = _newest_proven(Verification.objects.filter(from_seq__isnull=True), keys)
    every = timedelta(seconds=settings.BATON_AUDIT_FULL_VERIFY_EVERY_SECONDS)
    return newest is None or timezone.now() - newest.finished_at >= every


def verification_proven(row: Verification, keys: dict[str, Ed25519PublicKey]) -> bool:
    """Whether a trusted key signed exactly this outcome."""
    key = keys.get(row.key_id)
    if key is None or not row.signature:
        return False
    try:
        key.verify(bytes.fromhex(row.signature), _signed_text(row))
    except (InvalidSignature, ValueError):
        return False
    return True


def verification_max_age() -> timedelta:
    """How old a verification may be and still make the badge green: two scheduled runs."""
    return timedelta(seconds=2 * settings.BATON_AUDIT_VERIFY_EVERY_SECONDS)


@dataclass(frozen=True)
class BadgeState:
    """What the integrity badge may say. `verified` (green) only for a signed, fresh outcome
    whose head is still in the chain; `broken` for a signed failure; anything else is
    `stale`, `unproven` or `none` (never green)."""

    state: str
    verification: Verification | None = None
    note: str = ""
    checkpoint: Checkpoint | None = None  # the newest one a trusted key signed


def badge_state() -> BadgeState:
    try:
        keys = trusted_keys()
    except (SigningKeyError, OSError, ValueError):
        keys = {}
    # Bounded: the badge is polled, and anyone who can write the table can add rows.
    newest = Checkpoint.objects.order_by("-seq", "-id")[:BADGE_CHECKPOINTS]
    checkpoint = next((c for c in newest if checkpoint_trusted(c, keys)), None)
    shown = _verification_shown(keys)
    return BadgeState(shown.state, shown.verification, shown.note, checkpoint)


def _verification_shown(keys: dict[str, Ed25519PublicKey]) -> BadgeState:
    row = Verification.objects.order_by("-finished_at", "-id").first()
    if row is None:
        return BadgeState("none")
    if not verification_proven(row, keys):
        return BadgeState("unproven", row, VERIFICATION_UNPROVEN)
    if not row.ok:
        return BadgeState("broken", row)
    max_age = verification_max_age()
    if timezone.now() - row.finished_at > max_age:
        return BadgeState("stale", row, VERIFICATION_STALE.format(age=_duration(max_age)))
    held = (
        GENESIS
        if row.up_to_seq == 0
        else AuditEvent.objects.filter(seq=row.up_to_seq).values_list("hash", flat=True).first()
    )
    if held != row.up_to_hash:
        return BadgeState("unproven", row, VERIFICATION_MOVED)
    return BadgeState("verified", row)


def _duration(span: timedelta) -> str:
    minutes = int(span.total_seconds() // 60)
    return f"{minutes} minutes" if minutes >= 2 else f"{int(span.total_seconds())} seconds"
