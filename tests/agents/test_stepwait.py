"""The long poll wakes on the decision's doorbell (agents.stepwait), not by reading the
database over and over: a waiting poll reads the step once, then once per doorbell."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from agents import remote, stepwait
from agents.models import Agent
from agents.remote import apikey_create
from agents.services import agent_create, killswitch_engage, version_create, version_publish
from approvals.models import ApprovalRequest
from approvals.services import approval_decide

POLICY = {
    "rules": [
        {"tool": "test.pay", "effect": "approve"},
        {"tool": "test.count", "effect": "allow"},
    ]
}
PAY = {"seq": 1, "tool": "test.pay", "args": {"claim_id": "C", "amount": 5000}}


@pytest.fixture
def agent(world: Any) -> Agent:
    agent = agent_create(slug="ledger-bot", name="Ledger", team=world.claims, kind="remote")
    version_publish(
        version=version_create(agent=agent, program="", policy=POLICY), user=None, reason="first"
    )
    agent.refresh_from_db()
    return agent


@pytest.fixture
def key(agent: Agent, world: Any) -> str:
    return apikey_create(agent=agent, name="k", user=world.admin)[1]


def api(key: str, method: str, path: str, body: Any = None) -> Any:
    client, headers = Client(), {"Authorization": f"Bearer {key}"}
    if method == "GET":
        return client.get(f"/api/v1{path}", headers=headers)
    return client.post(
        f"/api/v1{path}", data=body or {}, content_type="application/json", headers=headers
    )


def held_run(key: str) -> int:
    run_id = int(api(key, "POST", "/runs", {"input": {}}).json()["run"])
    assert api(key, "POST", f"/runs/{run_id}/steps", PAY).json()["decision"] == "pending"
    return run_id


class Reads:
    """Counts the poll's reads of the step and says when the poll starts waiting."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        self.waiting = threading.Event()
        poll, wait = remote.remote_action_poll, stepwait.Bell.wait

        def counted(**kwargs: Any) -> Any:
            self.count += 1
            return poll(**kwargs)

        async def waiting(bell: stepwait.Bell, timeout: float) -> bool:
            self.waiting.set()
            return await wait(bell, timeout)

        monkeypatch.setattr(remote, "remote_action_poll", counted)
        monkeypatch.setattr(stepwait.Bell, "wait", waiting)


@pytest.mark.django_db(transaction=True)
def test_a_waiting_poll_answers_after_the_decision_commits_and_not_before(
    key: str, world: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = held_run(key)
    reads = Reads(monkeypatch)
    answers: list[Any] = []

    def long_poll() -> None:
        try:
            answers.append(api(key, "GET", f"/runs/{run_id}/steps/1?wait=25"))
        finally:
            connection.close()

    poll = threading.Thread(target=long_poll)
    poll.start()
    assert reads.waiting.wait(20), "the poll never started waiting"
    assert poll.is_alive() and not answers and reads.count == 1
    request = ApprovalRequest.objects.get(run_id=run_id)
    approval_decide(
        request_id=request.pk,
        user=world.supervisor,
        verdict="approve",
        seen_args_hash=request.args_hash,
    )
    poll.join(25)
    answer = answers[0]
    # A poll that ran out its wait would say "pending": "allow" means it saw the decision,
    # and it read the step twice — before waiting and once after the doorbell.
    assert answer.status_code == 200 and answer.json()["decision"] == "allow"
    assert answer.json()["args"]["amount"] == 5000
    assert reads.count == 2


@pytest.mark.django_db
def test_a_poll_with_no_decision_answers_pending_after_its_wait(
    key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = held_run(key)
    reads = Reads(monkeypatch)
    answer = api(key, "GET", f"/runs/{run_id}/steps/1?wait=0.5")
    assert answer.status_code == 200 and answer.json()["decision"] == "pending"
    assert reads.waiting.is_set() and reads.count == 1


@pytest.mark.django_db
def test_waiting_two_seconds_costs_no_more_queries_than_not_waiting(key: str) -> None:
    run_id = held_run(key)
    counts = []
    for wait in ("0", "2"):
        with CaptureQueriesContext(connection) as queries:
            answer = api(key, "GET", f"/runs/{run_id}/steps/1?wait={wait}")
        assert answer.json()["decision"] == "pending"
        counts.append(len(queries))
    # Reading four times a second would add ~8 reads of the run's journal in 2 s.
    assert counts[0] == counts[1] and counts[1] < 15


@pytest.mark.django_db(transaction=True)
def test_step_changed_rings_for_a_switch_engaged_and_times_out_without_one(
    key: str, agent: Agent, world: Any
) -> None:
    run_id = held_run(key)
    assert async_to_sync(stepwait.step_changed)(run_id, 0.2) is False
    rang: list[bool] = []
    listening = threading.Event()

    async def wait() -> None:
        async with stepwait.run_bell(run_id) as bell:
            listening.set()
            rang.append(await bell.wait(20))

    waiter = threading.Thread(target=async_to_sync(wait))
    waiter.start()
    assert listening.wait(20)
    killswitch_engage(scope="agent", agent=agent, mode="pause", reason="audit", user=world.admin)
    waiter.join(25)
    assert rang == [True]
