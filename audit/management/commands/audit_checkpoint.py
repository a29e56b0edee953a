"""Sign the audit chain head now (checkpoints are also signed on a schedule)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from audit.signing import NO_SIGNING_KEY, checkpoint_sign


class Command(BaseCommand):
    help = "Sign a checkpoint of the audit chain head."

    def handle(self, *args: Any, **options: Any) -> None:
        checkpoint = checkpoint_sign()
        if checkpoint is None:
            raise CommandError(NO_SIGNING_KEY)
        self.stdout.write(
            f"checkpoint #{checkpoint.seq} {checkpoint.hash} signed at {checkpoint.signed_at} "
            f"by key {checkpoint.key_id}"
        )
