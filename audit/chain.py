"""The canonical form of an audit event and its hash: the one contract between the writers
(Python here, and the Postgres function `baton_audit_append`) and every verifier.

canonical(event) = UTF-8 JSON of the content fields below, keys sorted, no spaces,
non-ASCII kept, NaN refused; times as ISO 8601 UTC with microseconds and a trailing Z.
hash(event) = SHA-256 hex of  prev_hash + "\\n" + str(seq) + "\\n" + canonical(event).
The first event's prev_hash is 64 zeros.
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


def chain_hash(prev_hash: str, seq: int, canonical: bytes) -> str:
    digest = hashlib.sha256(f"{prev_hash}\n{seq}\n".encode())
    digest.update(canonical)
    return digest.hexdigest()


def event_hash(prev_hash: str, seq: int, content: dict[str, Any]) -> str:
    return chain_hash(prev_hash, seq, canonical_content(content))
