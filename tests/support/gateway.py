"""A hosted run's context as a worker holds it, for tests that drive single gateway steps."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from django.utils import timezone

from agents.gateway import Context
from agents.models import Run
from agents.services import run_start


def claimed(agent: Any, input: dict[str, Any] | None = None) -> Context:
    """A new run of `agent`, leased to this test as agents.runtime leases it to a worker
    (and loaded with the same related rows), and the context its program would get."""
    run = run_start(agent=agent, input=input or {})
    token = uuid.uuid4()
    until = timezone.now() + timedelta(hours=1)
    Run.objects.filter(pk=run.pk).update(
        status=Run.Status.RUNNING, lease_token=token, lease_until=until
    )
    run = Run.objects.select_related("agent__team", "version").get(pk=run.pk)
    return Context(run, token, {})
