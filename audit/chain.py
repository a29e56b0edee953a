"""The canonical form of an audit event and its hash: the one contract between the writers
(Python here, and the Postgres function `baton_audit_append`) and every verifier,
including the offline one (audit/offline.py), which restates it without importing this.

canonical(event) = UTF-8 JSON of the content fields below, keys sorted at every level, no
    whitespace, non-ASCII characters written as themselves, NaN and infinities refused;
    times as ISO 8601 UTC with microseconds and a trailing Z; numbers as Python's json
    writes them. The canonical bytes are stored verbatim (AuditEvent.body).
digest(event) = SHA-256 hex of canonical(event).
hash(event) = SHA-256 hex of the ASCII text  prev_hash + "\\n" + seq + "\\n" + digest(event).
The first event's prev_hash is 64 zeros ("0" * 64).

Hashing the digest rather than the bytes lets an export prove that an event it leaves
out still sits in the chain: it carries that event's seq and digest only.

A checkpoint signs the ASCII text
    "baton-checkpoint/1\\n" + seq + "\\n" + hash + "\\n" + signed_at + "\\n"
with Ed25519; key_id is the first 16 hex digits of SHA-256 of the raw 32-byte public key.
An export's seal signs  "baton-export/1\n" + SHA-256 hex of the export's bytes before the
seal + "\n"  with the same key (audit/export.py describes the export's records).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

GENESIS = "0" * 64
CONTENT_FIELDS = (
    "occurred_at",
    "actor_type",
    "actor_id",
    "actor_label",
    "verb",
    "subject_type",
    "subject_id",
    "agent_id",
    "team_id",
    "run_id",
    "payload",
)


def canonical_json(value: Any) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_content(content: dict[str, Any]) -> bytes:
    body = {k: content[k] for k in CONTENT_FIELDS}
    if isinstance(body["occurred_at"], datetime):
        body["occurred_at"] = format_time(body["occurred_at"])
    return canonical_json(body)


def digest(canonical: bytes) -> str:
    return hashlib.sha256(canonical).hexdigest()


def link_hash(prev_hash: str, seq: int, content_digest: str) -> str:
    return hashlib.sha256(f"{prev_hash}\n{seq}\n{content_digest}".encode()).hexdigest()


def chain_hash(prev_hash: str, seq: int, canonical: bytes) -> str:
    return link_hash(prev_hash, seq, digest(canonical))


def event_hash(prev_hash: str, seq: int, content: dict[str, Any]) -> str:
    return chain_hash(prev_hash, seq, canonical_content(content))


def checkpoint_message(seq: int, head_hash: str, signed_at: str) -> bytes:
    return f"baton-checkpoint/1\n{seq}\n{head_hash}\n{signed_at}\n".encode()


def export_seal_message(export_digest: str) -> bytes:
    return f"baton-export/1\n{export_digest}\n".encode()
