"""Run an audit sequencer candidate in this process (every worker process runs one too):
it waits for the sequencer's lock, then chains the queued events until stopped."""

from __future__ import annotations

import logging
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from audit import sequencer


class Command(BaseCommand):
    help = "Chain queued audit events: one candidate of the single audit sequencer."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--poll", type=float, default=None, help="seconds between looks without a wake"
        )

    def handle(self, *args: Any, poll: float | None, **options: Any) -> None:
        if sequencer.inline():
            raise CommandError(
                "Audit events are chained by their writers here (BATON_AUDIT_SEQUENCING=inline);"
                " there is nothing for a sequencer to do."
            )
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
        self.stdout.write("audit sequencer: waiting to hold the lock", ending="\n")
        self.stdout.flush()
        sequencer.serve(poll=poll)
