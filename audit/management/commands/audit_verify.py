"""Recompute the audit chain against its signed checkpoints; exit non-zero naming the first
bad sequence number if anything was changed, removed or forged. The whole trail by default;
`--incremental` goes on from the last signed outcome, as the scheduled run does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.signing import key_id, load_public_keys
from audit.verify import chain_verify_and_record


class Command(BaseCommand):
    help = "Verify the audit hash chain and its signed checkpoints."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--public-key",
            type=Path,
            help="trust only the key(s) in this PEM file, not the configured signing key",
        )
        parser.add_argument(
            "--incremental",
            action="store_true",
            help="go on from the head the last signed verification proved, reading only the "
            "events after it (the scheduled run); without it, the whole trail from the start",
        )

    def handle(
        self, *args: Any, public_key: Path | None, incremental: bool, **options: Any
    ) -> None:
        keys = None
        if public_key is not None:
            try:
                keys = {key_id(k): k for k in load_public_keys(public_key.read_bytes())}
            except (OSError, ValueError) as exc:
                raise CommandError(f"cannot read the public key {public_key}: {exc}") from exc
            if not keys:
                raise CommandError(f"{public_key} holds no Ed25519 public key")
        outcome, _ = chain_verify_and_record(keys=keys, incremental=incremental)
        if not outcome.ok:
            raise CommandError(f"audit chain BROKEN: {outcome.message}")
        self.stdout.write(f"audit chain OK: {outcome.message}")
