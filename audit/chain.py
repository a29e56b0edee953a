"""The canonical form of an audit event and its hash: the one contract between the writers
(Python here, and the Postgres function `baton_audit_append`, which hashes the bytes made
here) and every verifier, including the offline ones (audit/offline.py, audit/verify.js),
which restate it without importing this. audit/FORMAT.md describes it byte by byte.

canonical(event) = the event's content fields below as one JSON object, in the canonical
    form of the event's format (FORMAT_FIELD in the object):
    format 2 (every event written now): RFC 8785, the JSON Canonicalization Scheme, with
        "format": 2 among the fields;
    format 1 (events written before; no "format" field): UTF-8 JSON, keys sorted by code
        point at every level, no whitespace, non-ASCII characters as themselves, numbers as
        Python's json writes them.
    Times are ISO 8601 UTC with microseconds and a trailing Z. The canonical bytes are
    stored verbatim (AuditEvent.body).
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
import re
from datetime import UTC, datetime
from typing import Any

import rfc8785

from audit.jsonsafe import Unstorable

GENESIS = "0" * 64
FORMAT = 2
FORMAT_FIELD = "format"
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


class CanonicalFormError(Unstorable):
    """A value the canonical form cannot hold: NaN or an infinity, an integer no IEEE 754
    double holds exactly, a lone surrogate, a key that is not a string, or a type JSON
    does not have. Raised before anything is written."""


def canonical_json(value: Any) -> bytes:
    """RFC 8785 (JSON Canonicalization Scheme) bytes of a JSON value.

    Every number is an IEEE 754 double, as in JavaScript: an integer beyond 2**53 is taken
    when a double holds it exactly (so reading canonical bytes back and writing them again
    gives the same bytes) and refused otherwise."""
    try:
        if _fast(value):
            # Python's C encoder writes these exactly as RFC 8785 does, in about a quarter
            # of the package's time (the gateway writes two events a step); a property
            # test holds the two equal.
            text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            if not _ASTRAL_OR_SURROGATE.search(text):
                return text.encode("utf-8")
        return rfc8785.dumps(value)
    except rfc8785.IntegerDomainError:
        try:
            return rfc8785.dumps(_exact_doubles(value))
        except (rfc8785.CanonicalizationError, RecursionError) as exc:
            raise CanonicalFormError(f"the audit trail cannot hold this value: {exc}") from exc
    except rfc8785.CanonicalizationError as exc:
        raise CanonicalFormError(f"the audit trail cannot hold this value: {exc}") from exc
    except RecursionError as exc:
        raise CanonicalFormError("the audit trail cannot hold this value: too deep") from exc


_SAFE_INT = 2**53 - 1
# Keys sort alike by code point (json) and by UTF-16 code unit (RFC 8785) unless one holds
# a character beyond U+FFFF; a lone surrogate is for the package to refuse.
_ASTRAL_OR_SURROGATE = re.compile("[\ud800-\udfff\U00010000-\U0010ffff]")


def _fast(value: Any) -> bool:
    # A value nested deeper than this check can walk (the trail may hold such values from
    # before the boundaries refused them) takes the package's path, as it always did.
    try:
        return _same_in_json(value)
    except RecursionError:
        return False


def _same_in_json(value: Any) -> bool:
    """Whether Python's json writes this value's scalars as RFC 8785 does: strings, null,
    booleans, integers a double holds, and floats that both write in plain decimals with
    the same shortest digits (1e-4 <= |x| < 1e16) and that Python does not end in ".0"."""
    kind = type(value)
    # Text choices (AuditEvent.ActorType…) are str subclasses: both writers write their text.
    if isinstance(value, str) or kind is bool or value is None:
        return True
    if kind is int:
        return -_SAFE_INT <= value <= _SAFE_INT
    if kind is float:
        return 1e-4 <= abs(value) < 1e16 and not value.is_integer()
    if kind is dict:
        return all(type(k) is str and _same_in_json(v) for k, v in value.items())
    if kind is list:
        return all(_same_in_json(v) for v in value)
    return False


def _exact_doubles(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if abs(value) > _SAFE_INT:
            try:
                double = float(value)
            except OverflowError:
                raise CanonicalFormError(
                    f"the audit trail cannot hold this value: {value} is beyond the range "
                    "of a double"
                ) from None
            if double != value:
                raise CanonicalFormError(
                    f"the audit trail cannot hold this value: {value} is not exactly a "
                    "double (send such integers as strings)"
                )
            return double
        return value
    if isinstance(value, dict):
        return {k: _exact_doubles(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_exact_doubles(v) for v in value]
    return value


def canonical_json_v1(value: Any) -> bytes:
    """Format 1: the form events were written in before RFC 8785 (and still the form of
    the gateway's argument hash, which binds approvals already given)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _fields(content: dict[str, Any]) -> dict[str, Any]:
    body = {k: content[k] for k in CONTENT_FIELDS}
    if isinstance(body["occurred_at"], datetime):
        body["occurred_at"] = format_time(body["occurred_at"])
    return body


def canonical_content(content: dict[str, Any]) -> bytes:
    """The canonical bytes of a new event: format 2."""
    return canonical_json({**_fields(content), FORMAT_FIELD: FORMAT})


def canonical_content_v1(content: dict[str, Any]) -> bytes:
    """The canonical bytes an event had in format 1 (the tests; migration 0004 froze a copy)."""
    return canonical_json_v1(_fields(content))


# Top-level keys are ASCII and sorted in both formats, so "format" sits after "agent_id"
# and before "occurred_at", with only ids and labels (strings: no unescaped quote) before.
_FORMAT_IN_BODY = re.compile(r',"format":(\d+),"occurred_at":')


def body_format(body: str) -> int:
    """The format a stored body is written in, read without parsing it."""
    found = _FORMAT_IN_BODY.search(body, 0, body.index(',"occurred_at":') + 15)
    return int(found.group(1)) if found else 1


def canonical_body(content: dict[str, Any]) -> bytes:
    """The canonical bytes of parsed event content in the form it names (format 1 when it
    names none): what a verifier compares a stored or exported body with."""
    fmt = content.get(FORMAT_FIELD, 1)
    if fmt == FORMAT:
        return canonical_json(content)
    if fmt == 1 and FORMAT_FIELD not in content:
        return canonical_json_v1(content)
    raise CanonicalFormError(f"unknown audit event format {fmt!r}")


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
