"""People deciding and agents acting never deadlock (DESIGN section 10, invariant 8).

Decisions, expiries, run starts and holds run at the same time against real Postgres and a
real worker; afterwards Postgres itself says how many deadlocks it broke in this database.
"""

from __future__ import annotations

import contextlib
import random
import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection, connections

from agents.models import Run
from agents.services import run_start
from approvals.models import ApprovalRequest
from approvals.services import ServiceError, approval_decide, approvals_expire
from tests.conftest import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]

RUNS_PER_STARTER = 15


def decided_policy(timeout: int) -> dict[str, Any]:
    return {
        "rules": [
            {"tool": "test.held", "effect": "approve", "timeout": timeout},
            {"tool": "test.*", "effect": "allow"},
        ]
    }


def deadlocks() -> int:
    """Deadlocks Postgres detected in this database so far, every ended session counted."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_force_next_flush()")
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        return int(cursor.fetchone()[0])


def other_sessions(since: Any) -> int:
    """Sessions of this database begun since `since` (the worker's, the threads'), other
    than this one: sessions an earlier test left open are not this test's to wait for."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND backend_start >= %s",
            [since],
        )
        return int(cursor.fetchone()[0])


class Crew:
    """Threads doing what people and timers do, each on its own database connection; any
    error they meet is kept for the test to show."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.threads: list[threading.Thread] = []

    def add(self, body: Callable[[], None]) -> None:
        def run() -> None:
            try:
                body()
            except Exception as exc:  # noqa: BLE001  (every error is a finding)
                self.errors.append(f"{type(exc).__name__}: {exc}")
            finally:
                connections.close_all()

        self.threads.append(threading.Thread(target=run, daemon=True))

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)


def test_decisions_expiries_starts_and_holds_at_once_never_deadlock(
    make_agent: Any, world: Any, start_worker: Any
) -> None:
    patient = make_agent("patient", "tests.support.runtime_agents.decided", decided_policy(3600))
    hasty = make_agent("hasty", "tests.support.runtime_agents.decided", decided_policy(1))
    with connection.cursor() as cursor:
        cursor.execute("SELECT clock_timestamp()")
        began = cursor.fetchone()[0]
    before = deadlocks()
    worker = start_worker()
    crew = Crew()
    started: list[Run] = []

    def starter(name: str) -> Callable[[], None]:
        def body() -> None:
            for i in range(RUNS_PER_STARTER):
                agent = patient if i % 2 else hasty
                started.append(run_start(agent=agent, input={"label": f"{name}-{i}"}))

        return body

    def decider(person: Any) -> Callable[[], None]:
        def body() -> None:
            while not crew.stop.is_set():
                pending = list(
                    ApprovalRequest.objects.filter(status=ApprovalRequest.Status.PENDING)
                    .order_by("?")
                    .values_list("pk", "args_hash")[:5]
                )
                for pk, seen in pending:
                    verdict = random.choice(["approve", "approve", "reject"])  # noqa: S311
                    # ServiceError: decided by someone else or expired meanwhile, a clean loss.
                    with contextlib.suppress(ServiceError):
                        approval_decide(
                            request_id=pk,
                            user=person,
                            verdict=verdict,
                            seen_args_hash=seen,
                            comment="" if verdict == "approve" else "not this one",
                        )

        return body

    def expirer() -> None:
        while not crew.stop.is_set():
            approvals_expire()

    crew.add(starter("a"))
    crew.add(starter("b"))
    crew.add(decider(world.supervisor))
    crew.add(decider(world.second_supervisor))
    crew.add(expirer)
    crew.start()
    try:
        wait_for(
            lambda: (
                len(started) == 2 * RUNS_PER_STARTER
                and Run.objects.filter(status__in=Run.FINAL).count() == len(started)
            ),
            timeout=150,
            message="every run to finish",
        )
    finally:
        crew.join()
        worker.stop()
    assert crew.errors == []
    statuses = dict(Run.objects.values_list("pk", "status"))
    assert {run.pk: statuses[run.pk] for run in started} == {
        run.pk: Run.Status.SUCCEEDED for run in started
    }, "no run failed"
    # A session's statistics reach pg_stat_database when it ends: wait until every other
    # session of this database (the worker's, the threads') has ended.
    wait_for(lambda: other_sessions(began) == 0, timeout=30, message="the other sessions to end")
    assert deadlocks() - before == 0, "Postgres broke a deadlock between these transactions"
