"""Remote agents over the HTTP API: the same gateway, their own tools."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from agents import remote, store
from agents.models import Action, Agent, ApiKey, Payment, Run
from agents.remote import apikey_create, apikey_revoke
from agents.services import (
    ServiceError,
    agent_create,
    killswitch_engage,
    version_create,
    version_publish,
)
from approvals.models import ApprovalRequest
from approvals.services import approval_decide
from audit.models import AuditEvent

pytestmark = pytest.mark.django_db

POLICY = {
    "rules": [
        {"tool": "test.pay", "when": "amount <= 100", "effect": "allow"},
        {"tool": "test.pay", "effect": "approve", "reason": "big payouts need a person"},
        {"tool": "test.count", "effect": "allow"},
        {"tool": "email.send", "effect": "shadow"},
    ]
}


@pytest.fixture
def remote_agent(world: Any) -> Agent:
    agent = agent_create(
        slug="ledger-bot",
        name="Ledger bot",
        team=world.claims,
        kind=Agent.Kind.REMOTE,
        user=world.admin,
    )
    version = version_create(agent=agent, program="", policy=POLICY, user=world.admin)
    version_publish(version=version, user=None, reason="set-up")
    agent.refresh_from_db()
    return agent


@pytest.fixture
def key(remote_agent: Agent, world: Any) -> str:
    return apikey_create(agent=remote_agent, name="prod", user=world.admin)[1]


class Api:
    def __init__(self, key: str) -> None:
        self.client = Client(enforce_csrf_checks=True)
        self.headers = {"Authorization": f"Bearer {key}"}

    def post(self, path: str, body: Any = None, raw: bytes | None = None) -> Any:
        data = raw if raw is not None else json.dumps(body or {})
        return self.client.post(
            f"/api/v1{path}", data=data, content_type="application/json", headers=self.headers
        )

    def get(self, path: str) -> Any:
        return self.client.get(f"/api/v1{path}", headers=self.headers)


@pytest.fixture
def api(key: str) -> Api:
    return Api(key)


def start(api: Api) -> int:
    response = api.post("/runs", {"input": {"claim": "C-1"}})
    assert response.status_code == 201, response.content
    return int(response.json()["run"])


def test_a_remote_step_is_admitted_executed_by_the_agent_and_reported(api: Api) -> None:
    run_id = start(api)
    decision = api.post(
        f"/runs/{run_id}/steps",
        {"seq": 1, "tool": "test.pay", "args": {"claim_id": "C-1", "amount": 80}},
    )
    assert decision.json()["decision"] == "allow"
    assert decision.json()["idempotency_key"] == f"baton-run{run_id}-step1"
    assert Action.objects.get(run_id=run_id, seq=1).status == Action.Status.STARTED
    reported = api.post(f"/runs/{run_id}/steps/1/result", {"ok": True, "result": {"paid": 80}})
    assert reported.json()["decision"] == "done"
    finished = api.post(f"/runs/{run_id}/finish", {"output": {"paid": True}})
    assert finished.json()["status"] == "succeeded"
    verbs = list(
        AuditEvent.objects.filter(run_id=run_id).order_by("seq").values_list("verb", flat=True)
    )
    assert verbs == ["run.started", "action.allowed", "action.succeeded", "run.succeeded"]


def test_resubmitting_a_step_returns_its_state_instead_of_admitting_it_again(api: Api) -> None:
    run_id = start(api)
    step = {"seq": 1, "tool": "test.count", "args": {"label": "x"}}
    first, second = api.post(f"/runs/{run_id}/steps", step), api.post(f"/runs/{run_id}/steps", step)
    assert first.json() == second.json()
    assert Action.objects.filter(run_id=run_id).count() == 1
    assert AuditEvent.objects.filter(run_id=run_id, verb="action.allowed").count() == 1


def test_a_different_call_at_a_journaled_step_is_a_conflict(api: Api) -> None:
    run_id = start(api)
    api.post(f"/runs/{run_id}/steps", {"seq": 1, "tool": "test.count", "args": {"label": "x"}})
    other = api.post(
        f"/runs/{run_id}/steps", {"seq": 1, "tool": "test.count", "args": {"label": "y"}}
    )
    assert other.status_code == 409
    assert other.json()["error"] == "step 1 was submitted before as a different call"


def test_steps_must_come_in_order(api: Api) -> None:
    run_id = start(api)
    response = api.post(
        f"/runs/{run_id}/steps", {"seq": 3, "tool": "test.count", "args": {"label": "x"}}
    )
    assert response.status_code == 409
    assert "the next step of this run is 1" in response.json()["error"]


def test_denied_invalid_and_shadowed_steps_are_answered_and_journaled(api: Api) -> None:
    run_id = start(api)
    steps = api.post(f"/runs/{run_id}/steps", {"seq": 1, "tool": "ftp.upload", "args": {}})
    assert steps.json()["decision"] == "deny"
    assert "no tool named 'ftp.upload'" in steps.json()["reason"]
    invalid = api.post(
        f"/runs/{run_id}/steps",
        {"seq": 2, "tool": "test.pay", "args": {"claim_id": "C", "amount": "lots"}},
    )
    assert invalid.json()["decision"] == "deny"
    assert "amount: 'lots' is not of type 'number'" in invalid.json()["reason"]
    shadow = api.post(
        f"/runs/{run_id}/steps",
        {
            "seq": 3,
            "tool": "email.send",
            "args": {"to": "a@b.example", "subject": "Hi", "body": "Hello"},
        },
    )
    assert shadow.json()["decision"] == "shadow" and shadow.json()["result"]["simulated"]
    statuses = list(
        Action.objects.filter(run_id=run_id).order_by("seq").values_list("status", flat=True)
    )
    assert statuses == ["denied", "invalid", "shadowed"]


def test_a_held_step_waits_and_an_edited_approval_is_what_the_agent_runs(
    api: Api, world: Any
) -> None:
    run_id = start(api)
    held = api.post(
        f"/runs/{run_id}/steps",
        {"seq": 1, "tool": "test.pay", "args": {"claim_id": "C-1", "amount": 900}},
    )
    assert held.json()["decision"] == "pending"
    assert api.get(f"/runs/{run_id}/steps/1?wait=0.3").json()["decision"] == "pending"
    request = ApprovalRequest.objects.get(run_id=run_id)
    approval_decide(
        request_id=request.pk,
        user=world.supervisor,
        verdict="approve",
        edited_args={"claim_id": "C-1", "amount": 750},
        seen_args_hash=request.args_hash,
    )
    answer = api.get(f"/runs/{run_id}/steps/1?wait=5").json()
    assert answer["decision"] == "allow" and answer["args"]["amount"] == 750
    assert api.get(f"/runs/{run_id}/steps/1").json()["decision"] == "allow"  # admitted once
    assert AuditEvent.objects.filter(run_id=run_id, verb="action.allowed").count() == 1
    assert Run.objects.get(pk=run_id).status == Run.Status.RUNNING


def test_a_rejection_reaches_the_remote_agent_with_its_reason(api: Api, world: Any) -> None:
    run_id = start(api)
    api.post(
        f"/runs/{run_id}/steps",
        {"seq": 1, "tool": "test.pay", "args": {"claim_id": "C-1", "amount": 900}},
    )
    request = ApprovalRequest.objects.get(run_id=run_id)
    approval_decide(
        request_id=request.pk,
        user=world.supervisor,
        verdict="reject",
        comment="no invoice attached",
        seen_args_hash=request.args_hash,
    )
    answer = api.get(f"/runs/{run_id}/steps/1?wait=5").json()
    assert answer["decision"] == "rejected"
    assert answer["reason"] == "rejected by sam: no invoice attached"


def test_after_a_halt_the_remote_agent_is_told_so_and_nothing_is_admitted(
    api: Api,
    world: Any,
    remote_agent: Agent,
) -> None:
    run_id = start(api)
    killswitch_engage(
        scope="agent", agent=remote_agent, mode="halt", reason="fraud alert", user=world.supervisor
    )
    answer = api.post(
        f"/runs/{run_id}/steps", {"seq": 1, "tool": "test.count", "args": {"label": "x"}}
    )
    assert answer.status_code == 423
    assert answer.json()["decision"] == "halted" and answer.json()["code"] == "halted"
    assert not Action.objects.filter(run_id=run_id).exists()
    assert api.post("/runs", {"input": {}}).status_code == 409
    assert api.post(f"/runs/{run_id}/finish", {"output": {}}).status_code == 409


def test_a_pause_tells_the_agent_to_wait_and_admits_nothing(
    api: Api, world: Any, remote_agent: Agent
) -> None:
    run_id = start(api)
    killswitch_engage(scope="global", mode="pause", reason="maintenance", user=world.supervisor)
    response = api.post(
        f"/runs/{run_id}/steps", {"seq": 1, "tool": "test.count", "args": {"label": "x"}}
    )
    assert response.status_code == 423
    answer = response.json()
    assert answer["decision"] == "paused" and "maintenance" in answer["reason"]
    assert answer["code"] == "paused" and answer["error"] == answer["reason"]
    assert not Action.objects.filter(run_id=run_id).exists()


def test_reporting_twice_is_harmless_and_reporting_an_unstarted_step_is_refused(api: Api) -> None:
    run_id = start(api)
    api.post(f"/runs/{run_id}/steps", {"seq": 1, "tool": "test.count", "args": {"label": "x"}})
    report = {"ok": True, "result": {"n": 1}}
    assert api.post(f"/runs/{run_id}/steps/1/result", report).status_code == 200
    assert api.post(f"/runs/{run_id}/steps/1/result", report).status_code == 200
    other = api.post(f"/runs/{run_id}/steps/1/result", {"ok": False, "error": "boom"})
    assert other.status_code == 409 and "step 1 is succeeded" in other.json()["error"]
    assert api.post(f"/runs/{run_id}/steps/9/result", report).status_code == 404
    assert AuditEvent.objects.filter(run_id=run_id, verb="action.succeeded").count() == 1


# --- the same request twice at once -----------------------------------------------------------
# Each test lets "the other request" commit between this request's read and its write,
# where a real race would put it; both must come to one effect and the same answer.


def test_a_step_sent_twice_at_once_is_journaled_once_and_both_get_its_state(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = start(api)
    step = {"seq": 1, "tool": "test.count", "args": {"label": "x"}}
    read = remote._gate
    raced: list[Any] = []

    def stale_read(run: Run, tools: Any) -> Any:
        gate = read(run, tools)  # read before the other request's step commits
        if not raced:
            raced.append(None)
            raced[0] = api.post(f"/runs/{run_id}/steps", step)
        return gate

    monkeypatch.setattr(remote, "_gate", stale_read)
    response = api.post(f"/runs/{run_id}/steps", step)
    assert raced[0].status_code == 200
    assert (response.status_code, response.json()) == (200, raced[0].json())
    assert response.json()["decision"] == "allow"
    assert Action.objects.filter(run_id=run_id).count() == 1
    assert AuditEvent.objects.filter(run_id=run_id, verb="action.allowed").count() == 1
    # Another call at that step, racing the same way, is still the conflict it always is.
    raced.clear()
    other = {"seq": 2, "tool": "test.count", "args": {"label": "y"}}

    def other_first(run: Run, tools: Any) -> Any:
        gate = read(run, tools)
        if not raced:
            raced.append(None)
            raced[0] = api.post(f"/runs/{run_id}/steps", other)
        return gate

    monkeypatch.setattr(remote, "_gate", other_first)
    response = api.post(f"/runs/{run_id}/steps", {**other, "args": {"label": "z"}})
    assert response.status_code == 409
    assert response.json()["error"] == "step 2 was submitted before as a different call"


def test_a_report_sent_twice_at_once_is_recorded_once_and_both_get_the_step(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = start(api)
    api.post(f"/runs/{run_id}/steps", {"seq": 1, "tool": "test.count", "args": {"label": "x"}})
    report = {"ok": True, "result": {"n": 1}}
    finish = store.finish_step
    raced: list[Any] = []

    def other_first(**kwargs: Any) -> None:
        if not raced:  # the other report commits after this one read the step as started
            raced.append(None)
            raced[0] = api.post(f"/runs/{run_id}/steps/1/result", report)
        finish(**kwargs)

    monkeypatch.setattr(store, "finish_step", other_first)
    response = api.post(f"/runs/{run_id}/steps/1/result", report)
    assert raced[0].status_code == 200
    assert (response.status_code, response.json()) == (200, raced[0].json())
    assert AuditEvent.objects.filter(run_id=run_id, verb="action.succeeded").count() == 1


def test_a_model_call_sent_twice_at_once_is_journaled_once(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = start(api)
    call = {"seq": 1, "model": "m", "tokens_in": 3, "tokens_out": 4, "output": "hi"}
    read = remote._gate
    first: list[Any] = [call]  # what the other request sends
    raced: list[Any] = []

    def stale_read(run: Run, tools: Any = None) -> Any:
        gate = read(run)
        if not raced:
            raced.append(None)
            raced[0] = api.post(f"/runs/{run_id}/model-calls", first[0])
        return gate

    monkeypatch.setattr(remote, "_gate", stale_read)
    response = api.post(f"/runs/{run_id}/model-calls", call)
    assert raced[0].status_code == 201
    assert (response.status_code, response.json()) == (200, raced[0].json())
    assert AuditEvent.objects.filter(run_id=run_id, verb="model.called").count() == 1
    # Another call at that step, racing the same way, is the conflict it always is.
    first[0], raced[:] = {**call, "seq": 2}, []
    response = api.post(f"/runs/{run_id}/model-calls", {**call, "seq": 2, "output": "bye"})
    assert raced[0].status_code == 201
    assert response.status_code == 409
    assert response.json()["error"] == "step 2 was submitted before as a different call"


def test_an_approved_step_polled_twice_at_once_is_admitted_once_and_both_get_allow(
    api: Api, world: Any, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two long polls of one step (a client that timed out and asked again while its first
    # poll still waits) wake on the same approval: one admits the step, both answer allow.
    run_id = start(api)
    pay = {"seq": 1, "tool": "test.pay", "args": {"claim_id": "C-1", "amount": 900}}
    assert api.post(f"/runs/{run_id}/steps", pay).json()["decision"] == "pending"
    request = ApprovalRequest.objects.get(run_id=run_id)
    approval_decide(
        request_id=request.pk,
        user=world.supervisor,
        verdict="approve",
        seen_args_hash=request.args_hash,
    )
    run = remote.remote_run(remote.apikey_authenticate(key), run_id)
    read = remote._gate
    raced: list[Any] = []

    def stale_read(run: Run, tools: Any) -> Any:
        gate = read(run, tools)  # the step read as approved, before the other poll admits it
        if not raced:
            raced.append(None)
            raced[0] = remote.remote_action_poll(run=run, seq=1)
        return gate

    monkeypatch.setattr(remote, "_gate", stale_read)
    answer = remote.remote_action_poll(run=run, seq=1)
    assert raced[0]["decision"] == "allow"
    assert answer == raced[0]
    assert AuditEvent.objects.filter(run_id=run_id, verb="action.allowed").count() == 1


def test_a_run_cannot_finish_with_a_step_still_open(api: Api) -> None:
    run_id = start(api)
    api.post(f"/runs/{run_id}/steps", {"seq": 1, "tool": "test.count", "args": {"label": "x"}})
    response = api.post(f"/runs/{run_id}/finish", {"output": {}})
    assert response.status_code == 409 and "step 1 is still started" in response.json()["error"]


@pytest.mark.parametrize(
    ("path", "raw", "status", "message"),
    [
        ("/runs", b"{not json", 400, "the body must be a JSON object"),
        ("/runs", b"[1, 2]", 400, "the body must be a JSON object"),
        ("/runs", b'{"input": "a claim"}', 400, "input: should be a valid dictionary"),
        ("/runs/{run}/steps", b'{"seq": "1", "tool": "test.count"}', 400, "seq: should be"),
        ("/runs/{run}/steps", b'{"seq": true, "tool": "test.count"}', 400, "seq: should be"),
        ("/runs/{run}/steps", b'{"seq": 0, "tool": "test.count"}', 400, "seq: should be"),
        ("/runs/{run}/steps", b'{"seq": 1}', 400, "tool: field required"),
        (
            "/runs/{run}/steps",
            b'{"seq": 1, "tool": "t", "args": [1]}',
            400,
            "args: should be a valid dictionary",
        ),
        ("/runs/{run}/steps/1/result", b'{"ok": false}', 400, "error: what went wrong"),
        ("/runs/999999/steps", b'{"seq": 1, "tool": "test.count"}', 404, "no run 999999"),
    ],
)
def test_bad_input_gets_a_clear_error_and_changes_nothing(
    api: Api,
    path: str,
    raw: bytes,
    status: int,
    message: str,
) -> None:
    run_id = start(api)
    events = AuditEvent.objects.count()
    response = api.post(path.format(run=run_id), raw=raw)
    assert response.status_code == status
    assert message in response.json()["error"]
    assert AuditEvent.objects.count() == events
    assert not Action.objects.exists()


def test_wrong_methods_are_refused(api: Api) -> None:
    run_id = start(api)
    assert api.get("/runs").status_code == 405
    assert api.post(f"/runs/{run_id}").status_code == 405


@pytest.mark.parametrize("presented", ["", "Bearer ", "Bearer bk_nope.nope", "Basic abc"])
def test_a_request_without_a_valid_key_is_refused(world: Any, presented: str) -> None:
    response = Client().post(
        "/api/v1/runs",
        data="{}",
        content_type="application/json",
        headers={"Authorization": presented} if presented else {},
    )
    assert response.status_code == 401 and response["WWW-Authenticate"].startswith("Bearer")
    assert not Run.objects.exists()


def test_revoked_and_expired_keys_are_refused(remote_agent: Agent, world: Any) -> None:
    revoked, revoked_text = apikey_create(agent=remote_agent, name="old", user=world.admin)
    apikey_revoke(key=revoked, user=world.admin, reason="laptop lost")
    assert Api(revoked_text).post("/runs").json()["error"] == "this API key was revoked"
    expired, expired_text = apikey_create(agent=remote_agent, name="tmp", user=world.admin)
    ApiKey.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert Api(expired_text).post("/runs").json()["error"] == "this API key has expired"


def test_a_key_reaches_only_its_own_agents_runs(api: Api, world: Any) -> None:
    other = agent_create(slug="other-bot", name="Other", team=world.support, kind=Agent.Kind.REMOTE)
    version_publish(
        version=version_create(agent=other, program="", policy=POLICY), user=None, reason="set-up"
    )
    other_key = apikey_create(agent=other, name="k", user=None)[1]
    run_id = start(Api(other_key))
    assert api.get(f"/runs/{run_id}").status_code == 404
    assert (
        api.post(
            f"/runs/{run_id}/steps", {"seq": 1, "tool": "test.count", "args": {"label": "x"}}
        ).status_code
        == 404
    )


def test_only_remote_agents_take_keys_and_only_a_hash_is_stored(make_agent: Any, key: str) -> None:
    hosted = make_agent("hosted", "tests.support.agents.counter", POLICY)
    with pytest.raises(ServiceError, match="only remote agents take API keys"):
        apikey_create(agent=hosted, name="k", user=None)
    stored = ApiKey.objects.get()
    secret = key.split(".", 1)[1]
    assert secret not in stored.secret_hash and key.startswith(f"bk_{stored.prefix}.")
    assert not Payment.objects.exists()


def test_a_session_cookie_alone_does_not_reach_the_api(world: Any, remote_agent: Agent) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(world.supervisor)
    response = client.post("/api/v1/runs", data="{}", content_type="application/json")
    assert response.status_code == 401


def test_keys_are_issued_listed_and_revoked_from_the_command_line(remote_agent: Agent) -> None:
    from io import StringIO

    from django.core.management import CommandError, call_command

    out = StringIO()
    call_command("apikey", "create", "ledger-bot", "--name", "ci", stdout=out)
    text = out.getvalue().splitlines()[0]
    assert Api(text).post("/runs").status_code == 201
    listing = StringIO()
    call_command("apikey", "list", "ledger-bot", stdout=listing)
    prefix = text.split(".")[0]
    assert prefix in listing.getvalue()
    call_command("apikey", "revoke", prefix, "--reason", "rotated", stdout=StringIO())
    assert Api(text).post("/runs").status_code == 401
    with pytest.raises(CommandError, match="no agent 'nobody'"):
        call_command("apikey", "create", "nobody", "--name", "x")
