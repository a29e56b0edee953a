"""A remote agent against the console served by uvicorn: it long-polls a held step while
a supervisor approves it, then runs and reports it."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from typing import Any

import pytest

from agents.models import Agent, Run
from agents.remote import apikey_create
from agents.services import agent_create, version_create, version_publish
from approvals.models import ApprovalRequest
from approvals.services import approval_decide
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def call(server: Any, key: str, method: str, path: str, body: Any = None) -> Any:
    request = urllib.request.Request(  # noqa: S310  (http on loopback)
        f"{server.url}/api/v1{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        return json.loads(response.read())


def test_a_long_poll_answers_when_the_supervisor_approves(console_server: Any, world: Any) -> None:
    agent = agent_create(
        slug="ledger-bot", name="Ledger bot", team=world.claims, kind=Agent.Kind.REMOTE
    )
    version_publish(
        version=version_create(
            agent=agent, program="", policy={"rules": [{"tool": "test.pay", "effect": "approve"}]}
        ),
        user=None,
        reason="set-up",
    )
    key = apikey_create(agent=agent, name="k", user=None)[1]
    run_id = call(console_server, key, "POST", "/runs", {"input": {}})["run"]
    held = call(
        console_server,
        key,
        "POST",
        f"/runs/{run_id}/steps",
        {"seq": 1, "tool": "test.pay", "args": {"claim_id": "C", "amount": 5000}},
    )
    assert held["decision"] == "pending"

    answers: list[Any] = []

    def long_poll() -> None:
        answers.append(call(console_server, key, "GET", f"/runs/{run_id}/steps/1?wait=20"))

    poll = threading.Thread(target=long_poll)
    poll.start()
    time.sleep(1.0)
    assert not answers, "the poll must wait while the step is pending"
    request = wait_for(lambda: ApprovalRequest.objects.filter(run_id=run_id).first())
    approval_decide(
        request_id=request.pk,
        user=world.supervisor,
        verdict="approve",
        seen_args_hash=request.args_hash,
    )
    poll.join(25)
    # Had the poll run out its 20 s it would say "pending": "allow" means it saw the decision.
    assert answers[0]["decision"] == "allow" and answers[0]["args"]["amount"] == 5000

    call(
        console_server,
        key,
        "POST",
        f"/runs/{run_id}/steps/1/result",
        {"ok": True, "result": {"paid": 5000}},
    )
    done = call(console_server, key, "POST", f"/runs/{run_id}/finish", {"output": {"ok": 1}})
    assert done["status"] == "succeeded"
    assert Run.objects.get(pk=run_id).status == Run.Status.SUCCEEDED
