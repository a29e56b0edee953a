"""The acceptance load test, bounded: real worker processes working through a hundred
runs while people decide every few hundred milliseconds and requests expire; one worker is
SIGKILLed and replaced mid-way and the broker (a private redis-server) restarted. Then: no
run lost or stuck, no payment made twice, every journal outcome audited, the chain intact.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connections

from agents.models import Action, Payment, Run
from agents.services import run_start
from approvals.models import ApprovalRequest
from approvals.services import ServiceError, approval_decide
from audit.models import AuditEvent
from tests.conftest import free_port, wait_for
from tests.support.private_redis import PrivateRedis

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.worker,
    pytest.mark.load,
    pytest.mark.timeout(4 * max(240, 8 * int(os.environ.get("BATON_LOAD_RUNS", "100")))),
]

# A hundred runs by default; BATON_LOAD_RUNS=300 (or more) for a heavier soak. The bounds
# below grow with it: they catch a stuck run, they do not time the machine.
RUNS = int(os.environ.get("BATON_LOAD_RUNS", "100"))
BOUND = max(240, 8 * RUNS)
POLICY = {
    "rules": [
        {"tool": "test.pay", "when": "amount <= 500", "effect": "allow"},
        {"tool": "test.pay", "effect": "approve", "timeout": 4},
        {"tool": "test.*", "effect": "allow"},
    ]
}


def final_count(runs: list[Run]) -> int:
    return Run.objects.filter(pk__in=[r.pk for r in runs], status__in=Run.FINAL).count()


def test_runs_survive_people_kills_and_a_broker_restart(
    make_agent: Any, world: Any, start_worker: Any, tmp_path: Path
) -> None:
    broker = PrivateRedis(free_port(), tmp_path).start()
    agent = make_agent("payer", "tests.support.runtime_agents.load_payout", POLICY)
    env = {"BATON_BROKER_URL": broker.url, "BATON_RUN_LEASE_SECONDS": "3"}
    steady = start_worker(
        beat=True,
        BATON_SWEEP_EVERY_SECONDS="0.5",
        BATON_REQUEUE_AFTER_SECONDS="2",
        BATON_DATA_DIR=str(tmp_path),
        **env,
    )
    victim = start_worker(**env)
    rng = random.Random(9)  # noqa: S311  (test data)
    runs = [
        run_start(
            agent=agent,
            input={"claim_id": f"L{i}", "amount": rng.choice([120, 480, 900, 2400]), "pause": 0.2},
        )
        for i in range(RUNS)
    ]

    stop = threading.Event()
    errors: list[str] = []

    def decide() -> None:
        # Even claims are decided (mostly approved); odd ones are left to expire.
        try:
            while not stop.wait(0.3):
                for request in ApprovalRequest.objects.filter(
                    status=ApprovalRequest.Status.PENDING
                ).select_related("run"):
                    if int(request.run.input["claim_id"][1:]) % 2:
                        continue
                    verdict = "reject" if rng.random() < 0.25 else "approve"
                    with contextlib.suppress(ServiceError):  # expired meanwhile: a clean loss
                        approval_decide(
                            request_id=request.pk,
                            user=world.supervisor,
                            verdict=verdict,
                            seen_args_hash=request.args_hash,
                            comment="not this one" if verdict == "reject" else "",
                        )
        except Exception as exc:  # noqa: BLE001  (every error is a finding)
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            connections.close_all()

    decider = threading.Thread(target=decide, daemon=True)
    decider.start()
    try:
        wait_for(lambda: final_count(runs) >= RUNS // 3, timeout=BOUND, message="a third done")
        victim.kill()
        start_worker(**env)
        wait_for(lambda: final_count(runs) >= 2 * RUNS // 3, timeout=BOUND, message="2/3 done")
        broker.restart()
        wait_for(lambda: final_count(runs) == RUNS, timeout=BOUND, message="every run to finish")
        assert steady.proc is not None and steady.proc.poll() is None, "the worker lived on"
    finally:
        stop.set()
        decider.join(30)
        broker.stop()
    assert errors == []

    # No run lost, stuck or failed: a rejection or an expiry is an answer the agent handles.
    statuses = Counter(Run.objects.filter(agent=agent).values_list("status", flat=True))
    assert statuses == {Run.Status.SUCCEEDED: RUNS}
    # No payment twice; every payment the journal says was made, made once, as approved.
    paid = Counter(Payment.objects.values_list("claim_id", flat=True))
    assert max(paid.values()) == 1
    for run in Run.objects.filter(agent=agent):
        pay = run.actions.get(name="test.pay")
        if pay.status == Action.Status.SUCCEEDED:
            assert Payment.objects.get(claim_id=run.input["claim_id"]).amount == Decimal(
                str(pay.args["amount"])
            )
        else:
            assert pay.status == Action.Status.REJECTED and run.input["claim_id"] not in paid
    # Every journal outcome is audited.
    events = {
        (e.subject_id, e.verb)
        for e in AuditEvent.objects.filter(subject_type__in=["action", "run", "approval"])
    }
    for action in Action.objects.filter(run__agent=agent):
        subject = f"{action.run_id}/{action.seq}"
        if action.status == Action.Status.SUCCEEDED:
            assert (subject, "action.succeeded") in events, subject
        else:
            request = ApprovalRequest.objects.get(action=action)
            assert (str(request.pk), f"approval.{request.status}") in events, subject
    for run in runs:
        assert (str(run.pk), "run.succeeded") in events
    assert not ApprovalRequest.objects.filter(status=ApprovalRequest.Status.PENDING).exists()
    call_command("audit_verify")  # raises CommandError naming the first bad seq
