"""The audit signing key and the checkpoints it signs (DESIGN section 7).

A checkpoint is the chain head (seq, hash) at a moment, signed with Ed25519 over the text
given in audit.chain. It is stored in the database for the pages and exports, and appended
to a file in BATON_AUDIT_CHECKPOINT_DIR: the copy outside the database is what catches
someone who rewrites the tail and the head together.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from audit.chain import checkpoint_message, format_time
from audit.models import ChainHead, Checkpoint

log = logging.getLogger(__name__)

NO_SIGNING_KEY = (
    "No audit signing key is configured: checkpoints are not signed. "
    "Set BATON_AUDIT_SIGNING_KEY_FILE (see `manage.py audit_keygen`)."
)
CHECKPOINT_FILE = "checkpoints.jsonl"


class SigningKeyError(ValueError):
    """A configured key that cannot be used; a ValueError, so every reader of keys that
    reports a bad value reports this one too."""


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def private_pem(private_key: Ed25519PrivateKey) -> bytes:
    return private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_private(pem: bytes, where: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except ValueError as exc:
        raise SigningKeyError(f"{where} does not hold a PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{where} holds a key that is not Ed25519")
    return key


@cache
def signing_key() -> Ed25519PrivateKey | None:
    """The configured key, or None when there is none. On this machine only (no HTTPS) a
    missing key file is created, like the secret key."""
    if settings.BATON_AUDIT_SIGNING_KEY:
        pem = settings.BATON_AUDIT_SIGNING_KEY.replace("\\n", "\n").encode()
        return _load_private(pem, "BATON_AUDIT_SIGNING_KEY")
    if not settings.BATON_AUDIT_SIGNING_KEY_FILE:
        return None
    path = Path(settings.BATON_AUDIT_SIGNING_KEY_FILE)
    if not path.exists() and not settings.HTTPS:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(private_pem(Ed25519PrivateKey.generate()))
        path.chmod(0o600)
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"BATON_AUDIT_SIGNING_KEY_FILE cannot be read: {exc}") from exc
    return _load_private(pem, str(path))


def trusted_keys() -> dict[str, Ed25519PublicKey]:
    """Public keys whose checkpoints verification accepts: the signing key's and the
    earlier ones listed in BATON_AUDIT_TRUSTED_KEYS_FILE."""
    keys: dict[str, Ed25519PublicKey] = {}
    private = signing_key()
    if private is not None:
        keys[key_id(private.public_key())] = private.public_key()
    if settings.BATON_AUDIT_TRUSTED_KEYS_FILE:
        text = Path(settings.BATON_AUDIT_TRUSTED_KEYS_FILE).read_text()
        for public in load_public_keys(text.encode()):
            keys[key_id(public)] = public
    return keys


def load_public_keys(pem_bundle: bytes) -> list[Ed25519PublicKey]:
    marker = b"-----END PUBLIC KEY-----"
    keys = []
    for chunk in pem_bundle.split(marker):
        if b"-----BEGIN PUBLIC KEY-----" not in chunk:
            continue
        try:
            key = serialization.load_pem_public_key(chunk.strip() + b"\n" + marker + b"\n")
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise SigningKeyError(f"a trusted key cannot be read: {exc}") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise SigningKeyError("a trusted key is not an Ed25519 public key")
        keys.append(key)
    return keys


@dataclass(frozen=True)
class SignedHead:
    seq: int
    hash: str
    signed_at: str
    key_id: str
    signature: str

    @classmethod
    def of(cls, checkpoint: Checkpoint) -> SignedHead:
        return cls(
            checkpoint.seq,
            checkpoint.hash,
            checkpoint.signed_at,
            checkpoint.key_id,
            checkpoint.signature,
        )

    def as_json(self) -> dict[str, object]:
        return {
            "seq": self.seq,
            "hash": self.hash,
            "signed_at": self.signed_at,
            "key_id": self.key_id,
            "signature": self.signature,
        }


def verification_message(
    *,
    ok: bool,
    up_to_seq: int,
    up_to_hash: str,
    first_bad_seq: int | None,
    checkpoints: int,
    finished_at: str,
    message: str,
    from_seq: int | None = None,
) -> bytes:
    """What a verification's signature covers: its whole outcome, the time it finished
    (the badge's freshness), the hash it verified up to and, for a run that went on from
    an earlier outcome, where it began (format 2; a full run keeps format 1, so every
    outcome signed before format 2 still verifies)."""
    fields = [
        "ok" if ok else "broken",
        str(up_to_seq),
        up_to_hash,
        "" if first_bad_seq is None else str(first_bad_seq),
        str(checkpoints),
        finished_at,
        hashlib.sha256(message.encode()).hexdigest(),
    ]
    if from_seq is None:
        return ("baton-verification/1\n" + "\n".join(fields) + "\n").encode()
    fields.append(str(from_seq))
    return ("baton-verification/2\n" + "\n".join(fields) + "\n").encode()


def head_trusted(signed: SignedHead, keys: dict[str, Ed25519PublicKey]) -> str | None:
    """None when a trusted key signed this head; otherwise why it is not to be trusted.
    Anyone who can write the database or the checkpoint directory can plant a checkpoint:
    only the signature makes it one."""
    key = keys.get(signed.key_id)
    if key is None:
        return f"checkpoint #{signed.seq} is signed by an unknown key {signed.key_id}"
    try:
        key.verify(
            bytes.fromhex(signed.signature),
            checkpoint_message(signed.seq, signed.hash, signed.signed_at),
        )
    except (InvalidSignature, ValueError):
        return f"checkpoint #{signed.seq} (signed {signed.signed_at}) has a bad signature"
    return None


def checkpoint_trusted(checkpoint: Checkpoint, keys: dict[str, Ed25519PublicKey]) -> bool:
    return head_trusted(SignedHead.of(checkpoint), keys) is None


def first_trusted_checkpoint(
    checkpoints: QuerySet[Checkpoint], keys: dict[str, Ed25519PublicKey]
) -> Checkpoint | None:
    """The first checkpoint of this ordered queryset that a trusted key signed."""
    return next((c for c in checkpoints.iterator() if checkpoint_trusted(c, keys)), None)


def checkpoint_sign(*, only_if_new: bool = False) -> Checkpoint | None:
    """Sign the current chain head and keep the checkpoint in the database and in the
    checkpoint file. Returns None when there is no key, or (only_if_new) when nothing was
    appended since the last checkpoint."""
    private = signing_key()
    if private is None:
        log.warning(NO_SIGNING_KEY)
        return None
    with transaction.atomic():
        # Lock the head: no writer may move it between reading and signing.
        head = ChainHead.objects.select_for_update().filter(pk=1).first()
        seq, head_hash = (head.seq, head.hash) if head else (0, "0" * 64)
        if only_if_new:
            # A planted row at the head must not stand in for the checkpoint it skips.
            ours = {key_id(private.public_key()): private.public_key()}
            newest = Checkpoint.objects.filter(seq__gte=seq).order_by("-seq", "-id")
            last = first_trusted_checkpoint(newest, ours)
            if last is not None and last.seq == seq:
                return None
        signed_at = format_time(timezone.now())
        signature = private.sign(checkpoint_message(seq, head_hash, signed_at)).hex()
        checkpoint = Checkpoint.objects.create(
            seq=seq,
            hash=head_hash,
            signed_at=signed_at,
            key_id=key_id(private.public_key()),
            signature=signature,
        )
        signed = SignedHead(seq, head_hash, signed_at, checkpoint.key_id, signature)
        transaction.on_commit(lambda: _keep_outside(signed))
    return checkpoint


def _keep_outside(signed: SignedHead) -> None:
    directory = Path(settings.BATON_AUDIT_CHECKPOINT_DIR)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with (directory / CHECKPOINT_FILE).open("a") as out:
            out.write(json.dumps(signed.as_json(), sort_keys=True) + "\n")
    except OSError:
        # The database copy stands; the badge shows verification against the file copy.
        log.exception("could not append checkpoint #%s to %s", signed.seq, directory)


def outside_checkpoints() -> list[SignedHead]:
    """The well-formed checkpoints kept in the checkpoint file (empty if there is none)."""
    return read_outside_checkpoints()[0]


def read_outside_checkpoints() -> tuple[list[SignedHead], list[str]]:
    """The checkpoints kept in the checkpoint file, and what is wrong with the file: a line
    that is no checkpoint, or a file that cannot be read, is named, never a traceback."""
    path = Path(settings.BATON_AUDIT_CHECKPOINT_DIR) / CHECKPOINT_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return [], []
    except (OSError, UnicodeDecodeError) as exc:
        return [], [f"the checkpoint file {path} cannot be read: {exc}"]
    found: list[SignedHead] = []
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        head = _signed_head(line)
        if head is None:
            problems.append(f"line {number} of the checkpoint file {path} is not a checkpoint")
        else:
            found.append(head)
    return found, problems


def _signed_head(line: str) -> SignedHead | None:
    try:
        row = json.loads(line)
    except ValueError:
        return None
    if not isinstance(row, dict):
        return None
    seq, head_hash, signed_at, signer, signature = (
        row.get(name) for name in ("seq", "hash", "signed_at", "key_id", "signature")
    )
    if type(seq) is not int or seq < 0:  # not a bool, not a float
        return None
    if not (
        isinstance(head_hash, str)
        and isinstance(signed_at, str)
        and isinstance(signer, str)
        and isinstance(signature, str)
    ):
        return None
    return SignedHead(seq, head_hash, signed_at, signer, signature)
