"""Partitions of the trail made before events need them (Postgres, audit migration 0011).

The events table is partitioned by ranges of PARTITION_SIZE sequence numbers. The
checkpoint task keeps at least a range's worth of room past the chain head; a DEFAULT
partition catches whatever runs past the last range if that task stood still, so an append
never fails for want of a partition, and the next call here folds what it caught into a
range of its own. SQLite keeps one plain table: nothing to do there."""

from __future__ import annotations

import logging

from django.db import DatabaseError, connection, transaction

log = logging.getLogger(__name__)

# Ten million events: about 10 GB with indexes (bench/README.md, "Audit trail"), one
# unit to move to a tablespace or detach; a hundred of them hold a billion events.
PARTITION_SIZE = 10_000_000

PARTITIONS_BEHIND = (
    "audit partitions could not be made ahead: %s (the DEFAULT partition holds events meanwhile)"
)


def partitions_ahead(*, size: int = PARTITION_SIZE, through: int | None = None) -> int:
    """Make the range partitions the trail will need next: every seq up to the chain head
    plus `size` (or `through`, when that is further) gets a range. Returns how many were
    made. Raises DatabaseError when it could not take its locks in time."""
    if connection.vendor != "postgresql":
        return 0
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT baton_audit_partitions_ahead(%s, %s)", [size, through])
        return int(cursor.fetchone()[0])


def partitions_keep_ahead() -> int:
    """The scheduled call: a lock it cannot take in time (a long export holds the DEFAULT
    partition) waits for the next run; the DEFAULT partition is the margin meanwhile."""
    try:
        return partitions_ahead()
    except DatabaseError as exc:
        log.warning(PARTITIONS_BEHIND, exc)
        return 0
