"""Evidence export: the events a filter selects, in JSON Lines or CSV, streamed, with what
an auditor needs to check them with nothing but the public key (audit/offline.py,
audit/verify.js). audit/FORMAT.md describes both layouts for a verifier's author.

An export covers one stretch of the chain, from a signed checkpoint (or the genesis) to a
later signed checkpoint. Inside it every event is either given in full (the filter
matched it) or as a link: its seq and digest only, which proves its place in the chain
without showing it. The export ends with a seal: the SHA-256 of everything before it,
signed, so a changed byte anywhere is caught, not only in the events.

JSON Lines, one object per line, in this order:
    {"type":"export", "format":"baton-audit-export/2", "generated_at", "by", "filter",
     "from_seq", "to_seq", "anchor":{"seq","hash"}}
    {"type":"checkpoint", "seq","hash","signed_at","key_id","signature"}   (0 or more)
    {"type":"event", "seq","prev_hash","hash","event":<the canonical body, verbatim>}
    {"type":"link", "seq","digest"}
    {"type":"seal", "sha256","key_id","signature"}
An event line ends with its stored body and "}": a verifier can hash those bytes as they
are, whatever the event's format.
CSV: the same records, one per row, under the header CSV_COLUMNS. Export format 2 added
the last column, `format` (the event's canonical form; empty for format 1).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

from django.db import connection
from django.db.models import BooleanField, ExpressionWrapper, Q

from audit.chain import (
    CONTENT_FIELDS,
    FORMAT_FIELD,
    GENESIS,
    body_format,
    canonical_json,
    export_seal_message,
)
from audit.models import AuditEvent, ChainHead, Checkpoint
from audit.signing import (
    checkpoint_trusted,
    first_trusted_checkpoint,
    key_id,
    signing_key,
    trusted_keys,
)

FORMAT = "baton-audit-export/2"
CHUNK_ROWS = 2000
CSV_COLUMNS = (
    "record",
    "seq",
    "prev_hash",
    "hash",
    "digest",
    *CONTENT_FIELDS,  # payload last, as canonical JSON text
    "signed_at",
    "key_id",
    "signature",
    FORMAT_FIELD,  # since export format 2; empty for events of format 1
)


@dataclass(frozen=True)
class Plan:
    """The stretch of chain an export covers: (anchor_seq, to_seq], with its checkpoints."""

    anchor_seq: int
    anchor_hash: str
    to_seq: int
    checkpoints: list[Checkpoint]


def export_plan(matched: Q, *, up_to: int | None = None) -> Plan:
    """From the last checkpoint before the first matching event to the first checkpoint at
    or after the last one (or the head, when no checkpoint covers it yet: the export then
    says so and the offline verifier refuses it)."""
    head = ChainHead.objects.filter(pk=1).first()
    up_to = head.seq if up_to is None and head else (up_to or 0)
    selected = AuditEvent.objects.filter(matched, seq__lte=up_to)
    first = selected.order_by("seq").values_list("seq", flat=True).first()
    last = selected.order_by("-seq").values_list("seq", flat=True).first()
    if first is None or last is None:
        first = last = up_to
    # Only checkpoints a trusted key signed: anyone who can write the table can add rows.
    keys = trusted_keys()
    before = first_trusted_checkpoint(
        Checkpoint.objects.filter(seq__lt=first).order_by("-seq"), keys
    )
    after = first_trusted_checkpoint(Checkpoint.objects.filter(seq__gte=last).order_by("seq"), keys)
    anchor_seq, anchor_hash = (before.seq, before.hash) if before else (0, GENESIS)
    to_seq = after.seq if after else up_to
    # One checkpoint per covered seq is enough; the newest of each.
    covering: dict[int, Checkpoint] = {}
    for checkpoint in Checkpoint.objects.filter(seq__gte=anchor_seq, seq__lte=to_seq).order_by(
        "seq", "id"
    ):
        if checkpoint_trusted(checkpoint, keys):
            covering[checkpoint.seq] = checkpoint
    if before is None:
        covering.pop(0, None)
    return Plan(anchor_seq, anchor_hash, to_seq, list(covering.values()))


ROW = ("seq", "prev_hash", "hash", "body", "matched")
ROW_TYPES = ["int8", "text", "text", "text", "bool"]
# The generated columns, read beside the body so CSV need not parse it.
COLUMNS = tuple(name for name in CONTENT_FIELDS if name != "payload")
COLUMN_TYPES = ["text", "text", "int8", "text", "text", "text", "text", "int8", "int8", "int8"]


def _rows(plan: Plan, matched: Q, *, columns: bool = False) -> Iterator[tuple[Any, ...]]:
    """(seq, prev_hash, hash, body, matched[, the COLUMNS]) over the plan's stretch,
    streamed."""
    fields, types = (ROW + COLUMNS, ROW_TYPES + COLUMN_TYPES) if columns else (ROW, ROW_TYPES)
    query = (
        AuditEvent.objects.filter(seq__gt=plan.anchor_seq, seq__lte=plan.to_seq)
        .annotate(matched=ExpressionWrapper(matched, output_field=BooleanField()))
        .order_by("seq")
        .values_list(*fields)
    )
    if connection.vendor == "postgresql":
        sql, params = query.query.sql_with_params()
        copy_sql = f"COPY ({sql}) TO STDOUT (FORMAT BINARY)"
        with connection.cursor() as cursor, cursor.cursor.copy(copy_sql, params) as copy:
            copy.set_types(types)
            yield from copy.rows()
        return
    yield from query.iterator(chunk_size=CHUNK_ROWS)


def payload_text(body: str) -> str:
    """The payload's canonical text, cut from the canonical body: top-level keys are
    sorted, so it is the value between "payload" and "run_id", and neither key can occur
    earlier or later than its own place outside a string (quotes in strings are escaped)."""
    return body[body.index(',"payload":') + 11 : body.rindex(',"run_id":')]


def _header(plan: Plan, by: str, filters: dict[str, Any], generated_at: str) -> dict[str, Any]:
    return {
        "type": "export",
        "format": FORMAT,
        "generated_at": generated_at,
        "by": by,
        "filter": filters,
        "from_seq": plan.anchor_seq + 1,
        "to_seq": plan.to_seq,
        "anchor": {"seq": plan.anchor_seq, "hash": plan.anchor_hash},
    }


def _checkpoint(c: Checkpoint) -> dict[str, Any]:
    return {
        "type": "checkpoint",
        "seq": c.seq,
        "hash": c.hash,
        "signed_at": c.signed_at,
        "key_id": c.key_id,
        "signature": c.signature,
    }


def _seal(digest: str) -> dict[str, Any]:
    private = signing_key()
    if private is None:
        return {"type": "seal", "sha256": digest, "key_id": "", "signature": ""}
    return {
        "type": "seal",
        "sha256": digest,
        "key_id": key_id(private.public_key()),
        "signature": private.sign(export_seal_message(digest)).hex(),
    }


def jsonl_chunks(
    plan: Plan, matched: Q, *, by: str, filters: dict[str, Any], generated_at: str
) -> Generator[bytes, None, None]:
    sealed = hashlib.sha256()
    sha256 = hashlib.sha256

    def emit(text: str) -> bytes:
        data = text.encode()
        sealed.update(data)
        return data

    lines = [json.dumps(_header(plan, by, filters, generated_at), sort_keys=True)]
    lines += [json.dumps(_checkpoint(c), sort_keys=True) for c in plan.checkpoints]
    yield emit("\n".join(lines) + "\n")
    batch: list[str] = []
    for seq, prev_hash, hash_, body, matched_row in _rows(plan, matched):
        if matched_row:
            batch.append(
                f'{{"type":"event","seq":{seq},"prev_hash":"{prev_hash}",'
                f'"hash":"{hash_}","event":{body}}}\n'
            )
        else:
            digest = sha256(body.encode()).hexdigest()
            batch.append(f'{{"type":"link","seq":{seq},"digest":"{digest}"}}\n')
        if len(batch) >= CHUNK_ROWS:
            yield emit("".join(batch))
            batch = []
    if batch:
        yield emit("".join(batch))
    yield (json.dumps(_seal(sealed.hexdigest()), sort_keys=True) + "\n").encode()


def csv_chunks(
    plan: Plan, matched: Q, *, by: str, filters: dict[str, Any], generated_at: str
) -> Generator[bytes, None, None]:
    sealed = hashlib.sha256()
    buffer = io.StringIO()
    out = csv.writer(buffer, lineterminator="\n")

    def flush() -> bytes:
        data = buffer.getvalue().encode()
        buffer.seek(0)
        buffer.truncate()
        sealed.update(data)
        return data

    header = _header(plan, by, filters, generated_at)
    out.writerow(CSV_COLUMNS)
    blank = dict.fromkeys(CSV_COLUMNS, "")
    meta = {k: v for k, v in header.items() if k not in ("type", "anchor")}
    out.writerow(
        {
            **blank,
            "record": "export",
            "seq": plan.anchor_seq,
            "hash": plan.anchor_hash,
            "payload": canonical_json(meta).decode(),
        }.values()
    )
    for c in plan.checkpoints:
        row = _checkpoint(c)
        out.writerow(
            {
                **blank,
                "record": "checkpoint",
                **{k: row[k] for k in ("seq", "hash", "signed_at", "key_id", "signature")},
            }.values()
        )
    yield flush()
    batch: list[str] = []
    for seq, prev_hash, hash_, body, matched_row, *columns in _rows(plan, matched, columns=True):
        if matched_row:
            batch.append(
                _csv_event(seq, prev_hash, hash_, columns, payload_text(body), body_format(body))
            )
        else:
            digest = hashlib.sha256(body.encode()).hexdigest()
            batch.append(f"link,{seq},,,{digest}{LINK_TAIL}")
        if len(batch) >= CHUNK_ROWS:
            data = "".join(batch).encode()
            sealed.update(data)
            yield data
            batch = []
    data = "".join(batch).encode()
    sealed.update(data)
    yield data
    seal = _seal(sealed.hexdigest())
    out.writerow(
        {
            **blank,
            "record": "seal",
            "hash": seal["sha256"],
            "key_id": seal["key_id"],
            "signature": seal["signature"],
        }.values()
    )
    yield buffer.getvalue().encode()


LINK_TAIL = "," * 15 + "\n"
_NEEDS_QUOTES = re.compile(r'[,"\r\n]').search


def _field(text: str) -> str:
    """One CSV field, quoted as Python's csv module quotes (minimal)."""
    if _NEEDS_QUOTES(text):
        return '"' + text.replace('"', '""') + '"'
    return text


def _csv_event(
    seq: int, prev_hash: str, hash_: str, columns: list[Any], payload: str, fmt: int
) -> str:
    # Written by hand: csv.writer was half of an export's time. Which columns can hold
    # commas or quotes is known (labels and ids given by people; the payload always).
    when, actor_type, actor_id, label, verb, subject_type, subject_id, agent, team, run = columns
    ids = ",".join("" if v is None else str(v) for v in (agent, team, run))
    return (
        f"event,{seq},{prev_hash},{hash_},,{when},{actor_type},"
        f"{'' if actor_id is None else actor_id},{_field(label)},{_field(verb)},"
        f"{_field(subject_type)},{_field(subject_id)},{ids},"
        f'"{payload.replace(chr(34), chr(34) * 2)}",,,,{fmt if fmt != 1 else ""}\n'
    )
