"""Every timer runs in every layout: the sweep, approval expiry, the signed checkpoint, the
scheduled verification and the KPI rollup, under `make run` (one process, beat as a
thread) and under a separate `celery worker -B` — each seen happening in the database,
never assumed."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from agents.models import KpiHour, Run
from agents.runtime import execute_run
from agents.services import run_start
from approvals.models import ApprovalRequest
from audit.models import Checkpoint, Verification
from tests.conftest import ROOT, child_env, free_port, wait_for

# Every timer fires twice a second, and a queued run counts as forgotten after a second.
SHORT_TIMERS = {
    "BATON_SWEEP_EVERY_SECONDS": "0.5",
    "BATON_REQUEUE_AFTER_SECONDS": "1",
    "BATON_APPROVAL_EXPIRY_EVERY_SECONDS": "0.5",
    "BATON_AUDIT_CHECKPOINT_EVERY_SECONDS": "0.5",
    "BATON_AUDIT_VERIFY_EVERY_SECONDS": "0.5",
    "BATON_KPI_ROLLUP_EVERY_SECONDS": "0.5",
}

# Run in the embedded console's database before it starts: a run whose message is lost
# (it went to this short-lived process's in-memory broker) and a request already overdue.
PREPARE = """
from datetime import timedelta
from django.core.management import call_command
from django.utils import timezone
from agents.demo.seed import demo_seed
from agents.models import Agent
from agents.runtime import execute_run
from agents.services import run_start
from approvals.models import ApprovalRequest

call_command("migrate", interactive=False, verbosity=0)
demo_seed()
mail = run_start(
    agent=Agent.objects.get(slug="customer-mailer"),
    input={"ticket_id": "T-1", "customer": "Mei Chen", "email": "mei@customer.example",
           "topic": "a late delivery"},
)
claim = run_start(
    agent=Agent.objects.get(slug="claims-payer"),
    input={"claim_id": "CLM-1", "policyholder": "Tom Becker",
           "description": "stolen bicycle", "amount": 5000},
)
execute_run(claim.pk)
# A run that ended three hours ago: its hour is closed, for the KPI rollup to add up.
from agents.models import Run
done = run_start(
    agent=Agent.objects.get(slug="customer-mailer"),
    input={"ticket_id": "T-0", "customer": "Ada Brun", "email": "ada@customer.example",
           "topic": "a refund"},
)
ago = timezone.now() - timedelta(hours=3)
Run.objects.filter(pk=done.pk).update(status="succeeded", created_at=ago, finished_at=ago)
held = ApprovalRequest.objects.get(run=claim, status="pending")
ApprovalRequest.objects.filter(pk=held.pk).update(due_at=timezone.now() - timedelta(minutes=1))
print("prepared", mail.pk, held.pk)
"""


def embedded_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of `make run`: no Postgres, no Redis, the demo's modules, a data
    directory of the test's own."""
    env = {
        k: v
        for k, v in child_env().items()
        if k not in ("DATABASE_URL", "REDIS_URL", "BATON_TASK_QUEUE", *SHORT_TIMERS)
    }
    env.update(
        BATON_DATA_DIR=str(tmp_path),
        BATON_HTTPS="false",
        SECRET_KEY="",
        BATON_AGENT_MODULES="agents.demo",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def start_up(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "up", *args, "--port", str(free_port())],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: "Baton is up" in log.read_text(), timeout=60, message="the banner")
    except AssertionError:
        stop(proc)
        raise
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_the_embedded_console_runs_every_timer(tmp_path: Path) -> None:
    env = embedded_env(tmp_path, **SHORT_TIMERS)
    prepared = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", PREPARE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    mail_id, request_id = (int(n) for n in prepared.split("prepared")[1].split())

    db = tmp_path / "baton.sqlite3"

    def one(sql: str, *params: Any) -> Any:
        with sqlite3.connect(db) as con:
            row = con.execute(sql, params).fetchone()
        return row[0] if row else None

    assert one("SELECT count(*) FROM audit_checkpoint") == 0
    assert one("SELECT count(*) FROM audit_verification") == 0

    log = tmp_path / "up.log"
    proc = start_up(env, log, "--no-demo")
    try:
        wait_for(
            lambda: one("SELECT count(*) FROM audit_checkpoint"),
            timeout=60,
            message=f"a signed checkpoint\n{log.read_text()[-3000:]}",
        )
        wait_for(
            lambda: one("SELECT count(*) FROM audit_verification WHERE ok"),
            timeout=60,
            message=f"a scheduled verification\n{log.read_text()[-3000:]}",
        )
        wait_for(
            lambda: one("SELECT status FROM agents_run WHERE id = ?", mail_id) == "succeeded",
            timeout=60,
            message=f"the sweep to hand over the forgotten run\n{log.read_text()[-3000:]}",
        )
        wait_for(
            lambda: (
                one("SELECT status FROM approvals_approvalrequest WHERE id = ?", request_id)
                == "expired"
            ),
            timeout=60,
            message=f"the overdue request to expire\n{log.read_text()[-3000:]}",
        )
        wait_for(
            # The hour's row (the run's day, once it has ended, also has a row of its
            # own: between midnight and 03:00 the run's day is yesterday and closed).
            lambda: one("SELECT sum(runs) FROM agents_kpihour WHERE hours = 1") == 1,
            timeout=60,
            message=f"the closed hour rolled up\n{log.read_text()[-3000:]}",
        )
    finally:
        stop(proc)


def test_the_embedded_console_checks_its_trail_as_soon_as_it_is_up(tmp_path: Path) -> None:
    """With the default timers (a checkpoint every 5 minutes, a verification every 15), a
    newcomer's console signs and verifies its trail at start, not an interval later."""
    env = embedded_env(tmp_path)
    db = tmp_path / "baton.sqlite3"

    def one(sql: str) -> Any:
        if not db.exists():
            return None
        with sqlite3.connect(db) as con:
            try:
                row = con.execute(sql).fetchone()
            except sqlite3.OperationalError:  # not migrated yet
                return None
        return row[0] if row else None

    log = tmp_path / "up.log"
    proc = start_up(env, log)
    try:
        wait_for(
            lambda: one("SELECT count(*) FROM audit_checkpoint"),
            timeout=60,
            message=f"the first checkpoint\n{log.read_text()[-3000:]}",
        )
        wait_for(
            lambda: one("SELECT count(*) FROM audit_verification WHERE ok"),
            timeout=60,
            message=f"the first verification\n{log.read_text()[-3000:]}",
        )
    finally:
        stop(proc)


TAKE_IT = {
    "rules": [{"tool": "test.pay", "effect": "approve"}, {"tool": "test.*", "effect": "allow"}]
}


@pytest.mark.django_db(transaction=True)
@pytest.mark.worker
def test_a_worker_with_beat_runs_every_timer(
    make_agent: Any, start_worker: Any, redis_client: Any, task_queue: str, tmp_path: Path
) -> None:
    counter = make_agent("counter", "tests.support.agents.counter", TAKE_IT)
    payer = make_agent("payer", "tests.support.agents.payout_with_fallback", TAKE_IT)
    forgotten = run_start(agent=counter, input={"label": "timers", "steps": 1})
    claim = run_start(agent=payer, input={"claim_id": "t1", "amount": 500})
    execute_run(claim.pk)
    held = ApprovalRequest.objects.get(run=claim, status=ApprovalRequest.Status.PENDING)
    ApprovalRequest.objects.filter(pk=held.pk).update(due_at=timezone.now() - timedelta(minutes=1))
    # A run that ended three hours ago: its hour is closed, for the KPI rollup to add up.
    done = run_start(agent=counter, input={"label": "old", "steps": 1})
    ago = timezone.now() - timedelta(hours=3)
    Run.objects.filter(pk=done.pk).update(
        status=Run.Status.SUCCEEDED, created_at=ago, finished_at=ago
    )
    redis_client.delete(task_queue)  # the broker lost both runs' messages
    assert not Checkpoint.objects.exists() and not Verification.objects.exists()

    start_worker(beat=True, BATON_DATA_DIR=str(tmp_path), **SHORT_TIMERS)

    wait_for(Checkpoint.objects.exists, timeout=30, message="a signed checkpoint")
    wait_for(
        Verification.objects.filter(ok=True).exists,
        timeout=30,
        message="a scheduled verification",
    )
    wait_for(
        lambda: Run.objects.get(pk=forgotten.pk).status == Run.Status.SUCCEEDED,
        timeout=30,
        message="the sweep to hand over the forgotten run",
    )
    wait_for(
        lambda: ApprovalRequest.objects.get(pk=held.pk).status == ApprovalRequest.Status.EXPIRED,
        timeout=30,
        message="the overdue request to expire",
    )
    wait_for(
        lambda: KpiHour.objects.filter(agent=counter, runs=1).exists(),
        timeout=30,
        message="the closed hour rolled up",
    )
