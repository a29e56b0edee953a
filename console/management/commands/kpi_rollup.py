"""`manage.py kpi_rollup`: bring the KPI rollup (agents.rollup) up to date now, as the beat
timer does every BATON_KPI_ROLLUP_EVERY_SECONDS; or rebuild it from the journal.

    manage.py kpi_rollup                      the closed hours not rolled up yet
    manage.py kpi_rollup --rebuild            every hour again (emptied, then caught up)
    manage.py kpi_rollup --rebuild --since 2026-11-01 [--until 2026-11-08T12:00]
                                              the hours of that range again

The rollup is derived from the journal alone: rebuilding it changes no figure a page
shows, only how fast it shows it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from agents.rollup import kpi_rollup, kpi_rollup_rebuild

BAD_TIME = "Give --since and --until as ISO 8601 times (2026-11-01 or 2026-11-01T12:00Z)."


def _when(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        at = datetime.fromisoformat(text)
    except ValueError as exc:
        raise CommandError(BAD_TIME) from exc
    return at if at.tzinfo else at.replace(tzinfo=UTC)


class Command(BaseCommand):
    help = "Roll up the KPIs' closed hours now, or rebuild the rollup from the journal."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--rebuild", action="store_true", help="compute hours again")
        parser.add_argument("--since", help="with --rebuild: from this time (UTC unless said)")
        parser.add_argument("--until", help="with --rebuild: up to this time")

    def handle(
        self, *args: Any, rebuild: bool, since: str | None, until: str | None, **options: Any
    ) -> None:
        if (since or until) and not rebuild:
            raise CommandError("--since and --until go with --rebuild.")
        done = kpi_rollup_rebuild(_when(since), _when(until)) if rebuild else kpi_rollup()
        self.stdout.write(
            f"{done.hours:,} hours examined: {done.written:,} agent version hours rolled up, "
            f"{done.open:,} agent hours left open."
        )
