"""Offline verifier for Baton audit exports. Needs only this file, Python 3.11 and the
`cryptography` package: no database, no Baton settings, no Baton code.

    python offline.py EXPORT(.jsonl|.csv) --public-key baton-audit-public-key.pem

It restates the documented canonical form (audit/FORMAT.md) on purpose instead of
importing Baton's, so a fault in the writer cannot hide itself in the verifier:

    canonical(event), by the event's "format" field:
      2: RFC 8785, the JSON Canonicalization Scheme (numbers as JavaScript writes
         doubles, keys sorted by UTF-16 code units, no whitespace);
      1 (no "format" field; events written before format 2): UTF-8 JSON, keys sorted by
         code point at every level, no whitespace, non-ASCII characters as themselves,
         numbers as Python's json writes them, no NaN or infinities.
    digest = SHA-256 hex of canonical(event)
    hash   = SHA-256 hex of  prev_hash + "\\n" + seq + "\\n" + digest   (genesis: 64 zeros)
    checkpoint signature: Ed25519 over "baton-checkpoint/1\\n" + seq + "\\n" + hash + "\\n"
        + signed_at + "\\n";  key_id = first 16 hex of SHA-256 of the raw public key
    seal signature: Ed25519 over "baton-export/1\\n" + SHA-256 hex of every byte of the
        export before the seal record + "\\n"

Exports of format baton-audit-export/1 and /2 are read (/2 added the CSV column `format`).
Exit status 0 when the export is intact and covered by a signed checkpoint, 1 otherwise,
with the first bad sequence number (or line) named.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

ZERO = "0" * 64
EXPORT_FORMATS = ("baton-audit-export/1", "baton-audit-export/2")
EVENT_FIELDS = (
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


@dataclass
class Report:
    ok: bool = True
    problems: list[str] = field(default_factory=list)
    events: int = 0
    links: int = 0
    checkpoints: int = 0
    from_seq: int = 0
    to_seq: int = 0

    def bad(self, problem: str) -> None:
        self.ok = False
        self.problems.append(problem)

    def summary(self) -> str:
        if self.ok:
            return (
                f"OK: #{self.from_seq}..#{self.to_seq} intact: {self.events} events shown, "
                f"{self.links} linked by digest, {self.checkpoints} signed checkpoints"
            )
        return "FAILED: " + "; ".join(self.problems[:5])


def _sha(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def canonical(event: dict[str, Any]) -> bytes:
    fmt = event.get("format")
    if fmt is None:
        return json.dumps(
            event, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8")
    if fmt == 2 and type(fmt) is int:
        return jcs(event).encode("utf-8")
    raise ValueError(f"unknown event format {fmt!r}")


# --- RFC 8785 ---------------------------------------------------------------------------

_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}
_TO_ESCAPE = re.compile(r'["\\\x00-\x1f]')
_SURROGATE = re.compile("[\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return _ESCAPES.get(char) or f"\\u{ord(char):04x}"


def _jcs_string(text: str) -> str:
    if _SURROGATE.search(text):
        raise ValueError("a string holds a lone surrogate")
    return '"' + _TO_ESCAPE.sub(_escape, text) + '"'


def _jcs_number(number: int | float) -> str:
    """ECMAScript's Number::toString of the double (RFC 8785 section 3.2.2.3)."""
    try:
        value = float(number)
    except OverflowError:
        raise ValueError(f"{number} is beyond the range of a double") from None
    if value != number or value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{number} is not a finite double")
    if value == 0:
        return "0"
    if value < 0:
        return "-" + _jcs_number(-value)
    mantissa, _, exponent = repr(value).partition("e")  # repr: the shortest digits
    whole, _, fraction = mantissa.partition(".")
    digits, point = whole + fraction, len(whole) + int(exponent or 0)
    while digits.startswith("0"):
        digits, point = digits[1:], point - 1
    digits = digits.rstrip("0")
    k, n = len(digits), point
    if k <= n <= 21:
        return digits + "0" * (n - k)
    if 0 < n <= 21:
        return digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return "0." + "0" * -n + digits
    e = n - 1
    sign = "+" if e >= 0 else "-"
    head = digits if k == 1 else digits[0] + "." + digits[1:]
    return f"{head}e{sign}{abs(e)}"


def jcs(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int | float):
        return _jcs_number(value)
    if isinstance(value, str):
        return _jcs_string(value)
    if isinstance(value, list):
        return "[" + ",".join(jcs(item) for item in value) + "]"
    if isinstance(value, dict):
        keys = sorted(value, key=lambda key: key.encode("utf-16-be", "surrogatepass"))
        return "{" + ",".join(_jcs_string(k) + ":" + jcs(value[k]) for k in keys) + "}"
    raise ValueError(f"{type(value).__name__} is not JSON")


def key_id_of(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return _sha(raw)[:16]


def load_keys(pem: bytes) -> dict[str, Ed25519PublicKey]:
    keys = {}
    end = b"-----END PUBLIC KEY-----"
    for chunk in pem.split(end):
        if b"-----BEGIN PUBLIC KEY-----" in chunk:
            key = serialization.load_pem_public_key(chunk.strip() + b"\n" + end + b"\n")
            if isinstance(key, Ed25519PublicKey):
                keys[key_id_of(key)] = key
    return keys


def _signed(keys: dict[str, Ed25519PublicKey], key: str, signature: str, message: bytes) -> bool:
    public = keys.get(key)
    if public is None:
        return False
    try:
        public.verify(bytes.fromhex(signature), message)
    except (InvalidSignature, ValueError):
        return False
    return True


def _jsonl_records(lines: Iterator[bytes]) -> Iterator[tuple[int, dict[str, Any]]]:
    for n, line in enumerate(lines, 1):
        if line.strip():
            yield n, json.loads(line)


def _int(text: str) -> int | None:
    return None if text == "" else int(text)


def _csv_record(row: dict[str, str]) -> dict[str, Any]:
    kind = row["record"]
    if kind == "export":
        return {
            "type": "export",
            **json.loads(row["payload"]),
            "anchor": {"seq": int(row["seq"]), "hash": row["hash"]},
        }
    if kind == "checkpoint":
        return {
            "type": "checkpoint",
            "seq": int(row["seq"]),
            "hash": row["hash"],
            "signed_at": row["signed_at"],
            "key_id": row["key_id"],
            "signature": row["signature"],
        }
    if kind == "event":
        event: dict[str, Any] = {
            "occurred_at": row["occurred_at"],
            "actor_type": row["actor_type"],
            "actor_id": _int(row["actor_id"]),
            "actor_label": row["actor_label"],
            "verb": row["verb"],
            "subject_type": row["subject_type"],
            "subject_id": row["subject_id"],
            "agent_id": _int(row["agent_id"]),
            "team_id": _int(row["team_id"]),
            "run_id": _int(row["run_id"]),
            "payload": json.loads(row["payload"]),
        }
        if row.get("format"):  # export format 2: the event's canonical form
            event["format"] = int(row["format"])
        return {
            "type": "event",
            "seq": int(row["seq"]),
            "prev_hash": row["prev_hash"],
            "hash": row["hash"],
            "event": event,
        }
    if kind == "link":
        return {"type": "link", "seq": int(row["seq"]), "digest": row["digest"]}
    raise ValueError(f"unknown record {kind!r}")


def _csv_records(lines: Iterator[bytes]) -> Iterator[tuple[int, dict[str, Any]]]:
    rows = csv.DictReader((line.decode() for line in lines), strict=True)
    for n, row in enumerate(rows, 2):
        if None in row or None in row.values():
            raise ValueError(f"row {n} does not have the export's columns")
        yield n, _csv_record(row)


class _Sealed:
    """Every line but the last, hashed as it passes; the last is the seal."""

    def __init__(self, lines: Iterable[bytes]) -> None:
        self.lines = iter(lines)
        self.digest = hashlib.sha256()
        self.last = b""

    def __iter__(self) -> Iterator[bytes]:
        held = next(self.lines, b"")
        for line in self.lines:
            self.digest.update(held)
            yield held
            held = line
        self.last = held


def _check_seal(sealed: _Sealed, keys: dict[str, Ed25519PublicKey], report: Report) -> None:
    last = sealed.last.rstrip(b"\n")
    try:
        if last.startswith(b"{"):
            seal = json.loads(last)
            if seal.get("type") != "seal":
                raise ValueError("the last line is not the seal")
            digest, key, signature = seal["sha256"], seal["key_id"], seal["signature"]
        else:
            cells = next(csv.reader([last.decode()]))
            if cells[0] != "seal":
                raise ValueError("the last row is not the seal")
            digest, key, signature = cells[3], cells[17], cells[18]
    except (ValueError, KeyError, IndexError, StopIteration, UnicodeDecodeError) as exc:
        report.bad(f"the export's seal is missing or unreadable ({exc})")
        return
    if sealed.digest.hexdigest() != digest:
        report.bad("the export's bytes do not match its seal: something in it was changed")
    elif not _signed(keys, key, signature, f"baton-export/1\n{digest}\n".encode()):
        report.bad("the export's seal is not signed by the given key")


def verify(data: bytes | Iterable[bytes], keys: dict[str, Ed25519PublicKey]) -> Report:
    """Check an export given whole, or as an iterable of its lines (a file opened in
    binary mode: memory stays flat however long the export is)."""
    lines = data.splitlines(keepends=True) if isinstance(data, bytes) else data
    sealed = _Sealed(lines)
    report = Report()
    walked = iter(sealed)
    first = next(walked, b"")
    again = _prepend(first, walked)
    records = _jsonl_records(again) if first.startswith(b"{") else _csv_records(again)
    try:
        _verify_chain(records, keys, report)
        for _ in walked:  # the rest, when the walk stopped early, still counts for the seal
            pass
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, csv.Error) as exc:
        report.bad(f"the export cannot be read: {exc}")
        return report
    _check_seal(sealed, keys, report)
    return report


def _prepend(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest


def _verify_chain(
    records: Iterator[tuple[int, dict[str, Any]]],
    keys: dict[str, Ed25519PublicKey],
    report: Report,
) -> None:
    line, header = next(records, (0, {}))
    if header.get("type") != "export":
        report.bad("the export has no header")
        return
    if header.get("format") not in EXPORT_FORMATS:
        report.bad(f"unknown export format {header.get('format')!r}")
        return
    anchor_seq, running = int(header["anchor"]["seq"]), header["anchor"]["hash"]
    report.from_seq, report.to_seq = anchor_seq + 1, int(header["to_seq"])
    signed: dict[int, str] = {}
    want = anchor_seq + 1
    walking = False
    for line, record in records:
        kind = record["type"]
        if kind == "checkpoint":
            if walking:
                report.bad(f"line {line}: a checkpoint after the events")
                return
            seq, head = int(record["seq"]), record["hash"]
            message = f"baton-checkpoint/1\n{seq}\n{head}\n{record['signed_at']}\n".encode()
            if not _signed(keys, record["key_id"], record["signature"], message):
                report.bad(f"checkpoint #{seq} (line {line}) is not signed by the given key")
            elif signed.setdefault(seq, head) != head:
                report.bad(f"two checkpoints disagree at #{seq}")
            report.checkpoints += 1
            continue
        if not walking:
            walking = True
            if anchor_seq == 0 and running != ZERO:
                report.bad("the export starts at the genesis but its anchor is not 64 zeros")
            elif anchor_seq != 0 and signed.get(anchor_seq) != running:
                report.bad(f"the export's anchor #{anchor_seq} is not a signed checkpoint")
        seq = int(record["seq"])
        if seq != want:
            report.bad(f"line {line}: expected #{want}, found #{seq}")
            return
        if kind == "event":
            if record["prev_hash"] != running:
                report.bad(f"#{seq} does not link to the event before it")
                return
            try:
                body = canonical(record["event"])
            except ValueError as exc:
                report.bad(f"#{seq} is not in a canonical form: {exc}")
                return
            running = _sha(f"{running}\n{seq}\n{_sha(body)}")
            if running != record["hash"]:
                report.bad(f"#{seq} does not match its hash: its content was changed")
                return
            report.events += 1
        elif kind == "link":
            running = _sha(f"{running}\n{seq}\n{record['digest']}")
            report.links += 1
        else:
            report.bad(f"line {line}: unknown record {kind!r}")
            return
        if seq in signed and signed[seq] != running:
            report.bad(f"#{seq} differs from the checkpoint signed at #{seq}")
            return
        want = seq + 1
    last = want - 1
    if last != report.to_seq:
        report.bad(f"the export stops at #{last}, its header says #{report.to_seq}")
    elif last not in signed:
        report.bad(f"#{last}, the end of the export, is not covered by a signed checkpoint")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Verify a Baton audit export offline.")
    parser.add_argument("export", type=Path)
    parser.add_argument("--public-key", type=Path, required=True, action="append")
    args = parser.parse_args(argv)
    keys: dict[str, Ed25519PublicKey] = {}
    for path in args.public_key:
        keys.update(load_keys(path.read_bytes()))
    if not keys:
        print("FAILED: no Ed25519 public key in " + ", ".join(map(str, args.public_key)))
        return 1
    with args.export.open("rb") as export:
        report = verify(export, keys)
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
