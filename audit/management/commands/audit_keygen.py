"""Write a new Ed25519 audit signing key to a file (mode 0600) and print its public key.
Keep the file out of the repository; point BATON_AUDIT_SIGNING_KEY_FILE at it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.signing import key_id, private_pem, public_pem


class Command(BaseCommand):
    help = "Generate an audit signing key."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", type=Path)

    def handle(self, *args: Any, path: Path, **options: Any) -> None:
        key = Ed25519PrivateKey.generate()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError as exc:
            raise CommandError(f"{path} exists; a signing key is never overwritten") from exc
        with os.fdopen(fd, "wb") as out:
            out.write(private_pem(key))
        self.stdout.write(f"key {key_id(key.public_key())} written to {path}\n")
        self.stdout.write(public_pem(key.public_key()).decode())
