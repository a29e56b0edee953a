"""The API v1 additions: 429 and 423 answers, model calls, heartbeat, the agent's state,
Idempotency-Key on run start, JSON 405/401 answers, and the served OpenAPI document."""

from __future__ import annotations

import json
import re
import threading
from typing import Any

import pytest
from django.db import connection
from django.test import Client

from agents import kpis
from agents.api import MAX_BODY_BYTES, MAX_COST_EUR
from agents.models import Action, Agent, Run
from agents.remote import apikey_create
from agents.services import agent_create, killswitch_engage, version_create, version_publish
from audit.models import AuditEvent

pytestmark = pytest.mark.django_db

POLICY = {
    "rules": [{"tool": "test.count", "effect": "allow"}],
    "rate_limits": [{"tool": "test.count", "limit": 1, "per": 3600}],
}
JSON = "application/json"


@pytest.fixture
def agent(world: Any) -> Agent:
    agent = agent_create(
        slug="ledger-bot", name="Ledger bot", team=world.claims, kind=Agent.Kind.REMOTE
    )
    version_publish(
        version=version_create(agent=agent, program="", policy=POLICY), user=None, reason="first"
    )
    agent.refresh_from_db()
    return agent


@pytest.fixture
def key(agent: Agent, world: Any) -> str:
    return apikey_create(agent=agent, name="prod", user=world.admin)[1]


def post(key: str, path: str, body: Any = None, **headers: str) -> Any:
    return Client().post(
        f"/api/v1{path}",
        data=json.dumps(body if body is not None else {}),
        content_type=JSON,
        headers={"Authorization": f"Bearer {key}", **headers},
    )


def get(key: str, path: str) -> Any:
    return Client().get(f"/api/v1{path}", headers={"Authorization": f"Bearer {key}"})


def start(key: str) -> int:
    return int(post(key, "/runs", {"input": {}}).json()["run"])


def test_a_rate_limited_step_is_a_429_with_retry_after_and_nothing_journaled(key: str) -> None:
    run_id = start(key)
    assert (
        post(
            key, f"/runs/{run_id}/steps", {"seq": 1, "tool": "test.count", "args": {"label": "a"}}
        ).status_code
        == 200
    )
    response = post(
        key, f"/runs/{run_id}/steps", {"seq": 2, "tool": "test.count", "args": {"label": "b"}}
    )
    assert response.status_code == 429
    answer = response.json()
    assert answer["decision"] == "retry" and answer["code"] == "rate_limited"
    assert answer["error"] == answer["reason"] and "rate limit" in answer["reason"]
    assert int(response["Retry-After"]) >= answer["retry_after"] > 0
    assert list(Action.objects.filter(run_id=run_id).values_list("seq", flat=True)) == [1]


def test_a_model_call_is_journaled_once_and_audited(key: str) -> None:
    run_id = start(key)
    call = {
        "seq": 1,
        "model": "gpt-x",
        "purpose": "triage",
        "tokens_in": 120,
        "tokens_out": 30,
        "cost_eur": 0.002,
        "output": {"label": "fraud"},
    }
    first = post(key, f"/runs/{run_id}/model-calls", call)
    assert first.status_code == 201, first.content
    assert first.json() == {
        "seq": 1,
        "tool": "gpt-x",
        "status": "succeeded",
        "decision": "done",
        "result": {"label": "fraud"},
        "error": "",
    }
    again = post(key, f"/runs/{run_id}/model-calls", call)
    assert again.status_code == 200 and again.json() == first.json()
    other = post(key, f"/runs/{run_id}/model-calls", {**call, "tokens_out": 31})
    assert other.status_code == 409 and other.json()["code"] == "conflict"
    action = Action.objects.get(run_id=run_id, seq=1)
    assert action.kind == Action.Kind.MODEL and action.meta["tokens_in"] == 120
    event = AuditEvent.objects.get(run_id=run_id, verb="model.called")
    assert event.payload["output"] == {"label": "fraud"} and event.payload["cost_eur"] == 0.002
    # The next tool step follows the model call in the journal.
    assert (
        post(
            key, f"/runs/{run_id}/steps", {"seq": 2, "tool": "test.count", "args": {"label": "b"}}
        ).status_code
        == 200
    )


def test_a_model_call_under_a_pause_is_a_423_and_not_journaled(
    key: str, agent: Agent, world: Any
) -> None:
    run_id = start(key)
    killswitch_engage(scope="agent", agent=agent, mode="pause", reason="audit", user=world.admin)
    response = post(
        key,
        f"/runs/{run_id}/model-calls",
        {"seq": 1, "model": "m", "tokens_in": 1, "tokens_out": 1},
    )
    assert response.status_code == 423 and response.json()["code"] == "paused"
    assert not Action.objects.filter(run_id=run_id).exists()


def test_the_largest_model_calls_taken_still_add_up_on_the_kpi_page(key: str, agent: Agent) -> None:
    # The KPIs sum tokens as integers and costs as doubles, in Postgres: what the API takes
    # must add up there (an integer past 2**31 - 1, or two costs near 1e308, failed the page).
    run_id = start(key)
    for seq in (1, 2):
        call = {"seq": seq, "model": "m", "tokens_in": 2**31 - 1, "tokens_out": 2**31 - 1}
        response = post(key, f"/runs/{run_id}/model-calls", {**call, "cost_eur": MAX_COST_EUR})
        assert response.status_code == 201, response.content
    figures = kpis.agent_page(agent, kpis.window_named("24h"))
    assert figures


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"seq": 1, "model": "m", "tokens_in": 1}, "tokens_out"),
        ({"seq": 1, "model": "m", "tokens_in": -1, "tokens_out": 1}, "tokens_in"),
        ({"seq": 1, "model": "", "tokens_in": 1, "tokens_out": 1}, "model"),
        ({"seq": "1", "model": "m", "tokens_in": 1, "tokens_out": 1}, "seq"),
        ({"seq": 1, "model": "m", "tokens_in": 1, "tokens_out": 1, "cost_eur": "x"}, "cost_eur"),
        ({"seq": 1, "model": "m", "tokens_in": 2**31, "tokens_out": 1}, "tokens_in"),
        ({"seq": 1, "model": "m", "tokens_in": 1, "tokens_out": 2**53}, "tokens_out"),
        ({"seq": 1, "model": "m", "tokens_in": 1, "tokens_out": 1, "cost_eur": 1e308}, "cost_eur"),
    ],
)
def test_a_bad_model_call_names_its_field(key: str, body: dict[str, Any], field: str) -> None:
    run_id = start(key)
    response = post(key, f"/runs/{run_id}/model-calls", body)
    assert response.status_code == 400
    assert response.json()["code"] == "bad_field"
    assert response.json()["error"].startswith(f"{field}: ")
    assert not Action.objects.filter(run_id=run_id).exists()


def test_heartbeat_and_the_agent_say_whether_a_switch_covers_it(
    key: str, agent: Agent, world: Any
) -> None:
    run_id = start(key)
    assert post(key, f"/runs/{run_id}/heartbeat").json() == {
        "run": run_id,
        "status": "running",
        "agent_state": "active",
    }
    assert get(key, "/agent").json() == {
        "agent": "ledger-bot",
        "name": "Ledger bot",
        "state": "active",
        "live_version": 1,
    }
    killswitch_engage(scope="global", mode="pause", reason="maintenance", user=world.supervisor)
    assert post(key, f"/runs/{run_id}/heartbeat").json()["agent_state"] == "paused"
    assert get(key, "/agent").json()["state"] == "paused"
    killswitch_engage(scope="agent", agent=agent, mode="halt", reason="fraud", user=world.admin)
    beat = post(key, f"/runs/{run_id}/heartbeat").json()
    assert beat == {"run": run_id, "status": "cancelled", "agent_state": "halted"}
    assert get(key, "/agent").json()["state"] == "halted"


def test_the_same_idempotency_key_starts_one_run(key: str) -> None:
    first = post(key, "/runs", {"input": {"claim": "C-1"}}, **{"Idempotency-Key": "order-7"})
    second = post(key, "/runs", {"input": {"claim": "C-1"}}, **{"Idempotency-Key": "order-7"})
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json() == second.json()
    other_key = post(key, "/runs", {"input": {"claim": "C-1"}}, **{"Idempotency-Key": "order-8"})
    assert other_key.status_code == 201 and other_key.json()["run"] != first.json()["run"]
    reused = post(key, "/runs", {"input": {"claim": "C-2"}}, **{"Idempotency-Key": "order-7"})
    assert reused.status_code == 409 and reused.json()["code"] == "conflict"
    assert Run.objects.count() == 2
    started = AuditEvent.objects.get(run_id=first.json()["run"], verb="run.started")
    assert started.payload["idempotency_key"] == "order-7"


def test_an_idempotency_key_is_per_agent(key: str, world: Any) -> None:
    other = agent_create(slug="other-bot", name="Other", team=world.claims, kind="remote")
    version_publish(
        version=version_create(agent=other, program="", policy=POLICY), user=None, reason="first"
    )
    other_key = apikey_create(agent=other, name="k", user=world.admin)[1]
    a = post(key, "/runs", {}, **{"Idempotency-Key": "k1"})
    b = post(other_key, "/runs", {}, **{"Idempotency-Key": "k1"})
    assert (a.status_code, b.status_code) == (201, 201)
    assert a.json()["run"] != b.json()["run"]


@pytest.mark.django_db(transaction=True)
def test_a_concurrent_double_start_with_one_key_makes_one_run(key: str) -> None:
    barrier = threading.Barrier(2)
    answers: list[Any] = []

    def submit() -> None:
        try:
            barrier.wait(5)
            answers.append(post(key, "/runs", {"input": {"n": 1}}, **{"Idempotency-Key": "twice"}))
        finally:
            connection.close()

    threads = [threading.Thread(target=submit) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(a.status_code for a in answers) == [200, 201]
    assert answers[0].json()["run"] == answers[1].json()["run"]
    assert Run.objects.filter(start_key="twice").count() == 1
    assert AuditEvent.objects.filter(verb="run.started").count() == 1


@pytest.mark.parametrize(
    ("value", "code"),
    [("x" * 201, "unstorable"), ("two words", "bad_field")],
    ids=["long", "space"],
)
def test_a_bad_idempotency_key_is_refused(key: str, value: str, code: str) -> None:
    response = post(key, "/runs", {}, **{"Idempotency-Key": value})
    assert response.status_code == 400 and response.json()["code"] == code
    assert "Idempotency-Key" in response.json()["error"]
    assert not Run.objects.exists()


def test_an_oversized_model_call_is_a_413(key: str) -> None:
    run_id = start(key)
    body = {"seq": 1, "model": "m", "tokens_in": 1, "tokens_out": 1, "output": "x" * MAX_BODY_BYTES}
    response = post(key, f"/runs/{run_id}/model-calls", body)
    assert response.status_code == 413 and response.json()["code"] == "body_too_large"
    assert not Action.objects.filter(run_id=run_id).exists()


def test_a_wrong_method_is_json_with_allow(key: str) -> None:
    response = Client().delete("/api/v1/agent", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 405
    assert response["Allow"] == "GET"
    assert response.json()["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    ("auth", "challenge"),
    [(None, "Bearer"), ("Bearer bk_nope.nope", 'Bearer error="invalid_token"')],
)
def test_a_401_says_how_to_authenticate(key: str, auth: str | None, challenge: str) -> None:
    headers = {"Authorization": auth} if auth else {}
    response = Client().get("/api/v1/agent", headers=headers)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == challenge
    assert response.json()["code"] == "unauthorized"


def test_a_revoked_key_says_so(key: str, agent: Agent, world: Any) -> None:
    from agents.models import ApiKey
    from agents.remote import apikey_revoke

    apikey_revoke(key=ApiKey.objects.get(agent=agent), user=world.admin, reason="leaked")
    response = get(key, "/agent")
    assert response.status_code == 401
    assert response.json() == {"error": "this API key was revoked", "code": "unauthorized"}


def test_the_openapi_document_is_served_and_exact(client: Client) -> None:
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    doc = response.json()
    assert set(doc["paths"]) == {
        "/api/v1/runs",
        "/api/v1/runs/{run_id}",
        "/api/v1/runs/{run_id}/steps",
        "/api/v1/runs/{run_id}/steps/{seq}",
        "/api/v1/runs/{run_id}/steps/{seq}/result",
        "/api/v1/runs/{run_id}/model-calls",
        "/api/v1/runs/{run_id}/heartbeat",
        "/api/v1/runs/{run_id}/finish",
        "/api/v1/agent",
    }
    submit = doc["paths"]["/api/v1/runs/{run_id}/steps"]["post"]
    assert {"200", "400", "401", "404", "409", "413", "415", "423", "429"} <= set(
        map(str, submit["responses"])
    )
    assert f"{MAX_BODY_BYTES:,} bytes" in doc["info"]["description"]
    assert doc["components"]["securitySchemes"]["AgentKey"]["scheme"] == "bearer"


def test_the_docs_page_runs_under_the_csp_from_local_files(client: Client) -> None:
    response = client.get("/api/v1/docs")
    assert response.status_code == 200
    html = response.content.decode()
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S)
    for attributes, body in scripts:
        # Code only from files of this origin; the one inline block is JSON data.
        assert ('src="/static/' in attributes and not body.strip()) or (
            'type="application/json"' in attributes
        )
    assert "cdn" not in html.lower() and "https://" not in html
    assert "script-src 'self'" in response["Content-Security-Policy"]
