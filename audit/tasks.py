from __future__ import annotations

from celery import shared_task

from audit.partitions import partitions_keep_ahead
from audit.signing import checkpoint_sign
from audit.verify import chain_verify_and_record, chain_verify_scheduled


@shared_task(name="audit.checkpoint")
def checkpoint() -> int | None:
    partitions_keep_ahead()  # before the trail needs them (audit.partitions)
    signed = checkpoint_sign(only_if_new=True)
    return signed.seq if signed else None


@shared_task(name="audit.verify")
def verify(full: bool = False) -> bool:
    """Beat's run (full=False): on from the last signed outcome, in full when one is due.
    On demand (full=True): the whole trail."""
    outcome, _ = chain_verify_and_record() if full else chain_verify_scheduled()
    return outcome.ok
