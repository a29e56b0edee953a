"""Input the audit trail cannot store is refused where it enters, with a clear 400, before
anything changes: NUL characters, lone surrogates, NaN and infinities, numbers beyond a
double or beyond 2**53, nesting deeper than audit.jsonsafe.MAX_DEPTH. One check
(audit.jsonsafe.plain_json) at every boundary: the remote API, hosted run input, approval
edits, kill-switch reasons, and the trail itself as the last line."""

from __future__ import annotations

import contextlib
import json
import math
from typing import Any

import pytest
from django.db import transaction
from django.test import Client

from agents import remote
from agents.errors import ActionError
from agents.models import Action, Agent, KillSwitch, Run
from agents.registry import ToolCall, program, tool
from agents.remote import apikey_create
from agents.runtime import execute_run
from agents.services import (
    ServiceError,
    agent_create,
    killswitch_engage,
    run_start,
    version_create,
    version_publish,
)
from audit import jsonsafe
from audit.models import AuditEvent
from audit.services import SYSTEM, audit_record
from audit.verbs import Verb
from tests.conftest import ALLOW_ALL_TESTS

pytestmark = pytest.mark.django_db

# (name, the bad value as JSON text, a word of the message that names the problem)
BAD_VALUES = [
    ("nul", '"a\\u0000b"', "NUL"),
    ("lone-surrogate", '"\\ud800"', "surrogate"),
    ("nan", "NaN", "finite"),
    ("infinity", "Infinity", "finite"),
    ("minus-infinity", "-Infinity", "finite"),
    ("beyond-double", "1e400", "finite"),
    ("beyond-2-53", "9007199254740993", "2**53"),
    ("below-minus-2-53", "-9007199254740993", "2**53"),
    ("nested-40", "[" * 40 + "]" * 40, "nested more than 32"),
    ("nested-900", "[" * 900 + "]" * 900, "nested more than 32"),
    ("nul-in-a-key", '{"a\\u0000": 1}', "NUL"),
    ("surrogate-in-a-key", '{"\\udfff": 1}', "surrogate"),
]
PARAMS = [pytest.param(text, word, id=name) for name, text, word in BAD_VALUES]

POLICY = {"rules": [{"tool": "test.*", "effect": "allow"}]}


@pytest.fixture
def remote_agent(world: Any) -> Agent:
    agent = agent_create(
        slug="ledger-bot", name="Ledger bot", team=world.claims, kind=Agent.Kind.REMOTE
    )
    version_publish(
        version=version_create(agent=agent, program="", policy=POLICY), user=None, reason="set-up"
    )
    agent.refresh_from_db()
    return agent


class Api:
    def __init__(self, key: str) -> None:
        self.client = Client()
        self.headers = {"Authorization": f"Bearer {key}"}

    def post(self, path: str, raw: str) -> Any:
        return self.client.post(
            f"/api/v1{path}", data=raw, content_type="application/json", headers=self.headers
        )


@pytest.fixture
def api(remote_agent: Agent, world: Any) -> Api:
    return Api(apikey_create(agent=remote_agent, name="prod", user=world.admin)[1])


def started_run(api: Api) -> int:
    response = api.post("/runs", '{"input": {"claim": "C-1"}}')
    assert response.status_code == 201, response.content
    return int(response.json()["run"])


def allowed_step(api: Api, run_id: int) -> None:
    body = '{"seq": 1, "tool": "test.count", "args": {"label": "x"}}'
    assert api.post(f"/runs/{run_id}/steps", body).json()["decision"] == "allow"


def assert_refused(response: Any, field: str, word: str) -> None:
    assert response.status_code == 400, response.content
    assert response["Content-Type"] == "application/json"
    answer = response.json()
    assert answer["code"] == "unstorable"
    assert answer["error"].startswith(field), answer
    assert word in answer["error"], answer


def trail() -> int:
    return AuditEvent.objects.count()


@pytest.mark.parametrize(("bad", "word"), PARAMS)
def test_the_api_refuses_a_run_input_the_trail_cannot_store(api: Api, bad: str, word: str) -> None:
    before = trail()
    response = api.post("/runs", f'{{"input": {{"claim": {bad}}}}}')
    assert_refused(response, "input", word)
    assert not Run.objects.exists()
    assert trail() == before


@pytest.mark.parametrize(("bad", "word"), PARAMS)
def test_the_api_refuses_step_arguments_the_trail_cannot_store(
    api: Api, bad: str, word: str
) -> None:
    run_id = started_run(api)
    before = trail()
    body = f'{{"seq": 1, "tool": "test.count", "args": {{"label": {bad}}}}}'
    assert_refused(api.post(f"/runs/{run_id}/steps", body), "args", word)
    assert not Action.objects.filter(run_id=run_id).exists()
    assert trail() == before


@pytest.mark.parametrize(("bad", "word"), PARAMS)
def test_the_api_refuses_a_step_result_the_trail_cannot_store(
    api: Api, bad: str, word: str
) -> None:
    run_id = started_run(api)
    allowed_step(api, run_id)
    before = trail()
    response = api.post(f"/runs/{run_id}/steps/1/result", f'{{"ok": true, "result": {bad}}}')
    assert_refused(response, "result", word)
    assert Action.objects.get(run_id=run_id, seq=1).status == Action.Status.STARTED
    assert trail() == before


@pytest.mark.parametrize(("bad", "word"), PARAMS)
def test_the_api_refuses_a_run_output_or_error_the_trail_cannot_store(
    api: Api, bad: str, word: str
) -> None:
    run_id = started_run(api)
    before = trail()
    assert_refused(api.post(f"/runs/{run_id}/finish", f'{{"output": {bad}}}'), "output", word)
    assert_refused(api.post(f"/runs/{run_id}/finish", f'{{"error": {bad}}}'), "error", word)
    assert Run.objects.get(pk=run_id).status == Run.Status.RUNNING
    assert trail() == before


def test_the_api_refuses_a_tool_name_longer_than_its_column(api: Api) -> None:
    run_id = started_run(api)
    before = trail()
    body = json.dumps({"seq": 1, "tool": "t" * 101, "args": {}})
    assert_refused(api.post(f"/runs/{run_id}/steps", body), "tool", "at most 100 characters")
    assert not Action.objects.filter(run_id=run_id).exists()
    assert trail() == before


@pytest.mark.parametrize(("bad", "word"), PARAMS)
def test_a_hosted_run_input_the_trail_cannot_store_is_refused(
    make_agent: Any, bad: str, word: str
) -> None:
    agent = make_agent("counter", "tests.support.agents.counter", ALLOW_ALL_TESTS)
    before = trail()
    with pytest.raises(ServiceError) as refused:
        run_start(agent=agent, input={"label": json.loads(bad)})
    assert str(refused.value).startswith("input")
    assert word in str(refused.value)
    assert not Run.objects.exists()
    assert trail() == before


@pytest.mark.parametrize(
    "reason",
    [
        pytest.param("stop\x00now", id="nul"),
        pytest.param("stop \ud800", id="lone-surrogate"),
    ],
)
def test_a_kill_switch_reason_the_trail_cannot_store_is_refused(world: Any, reason: str) -> None:
    before = trail()
    with pytest.raises(ServiceError) as refused:
        killswitch_engage(scope="team", mode="pause", reason=reason, user=None, team=world.claims)
    assert str(refused.value).startswith("reason")
    assert not KillSwitch.objects.exists()
    assert trail() == before


def test_the_kill_switch_form_refuses_a_nul_in_its_reason(world: Any) -> None:
    client = Client()
    client.force_login(world.supervisor)
    before = trail()
    response = client.post(
        "/switches/engage",
        {"scope": "team", "mode": "pause", "team": "claims", "reason": "stop\x00now"},
        follow=True,
    )
    assert response.status_code == 200
    assert "Null characters are not allowed." in response.content.decode()
    assert not KillSwitch.objects.exists()
    assert trail() == before


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({"x": math.nan}, id="nan"),
        pytest.param({"x": "a\x00"}, id="nul"),
        pytest.param({"x": 2**53 + 1}, id="beyond-2-53"),
        pytest.param({"x": json.loads("[" * 40 + "]" * 40)}, id="nested-40"),
    ],
)
def test_the_trail_itself_refuses_what_it_cannot_store(world: Any, payload: Any) -> None:
    before = trail()
    with pytest.raises(jsonsafe.Unstorable), transaction.atomic():
        audit_record(
            verb=Verb.AGENT_CREATED,
            actor=SYSTEM,
            subject_type="agent",
            subject_id=1,
            payload=payload,
        )
    assert trail() == before


def test_the_trail_refuses_a_subject_id_longer_than_its_column(world: Any) -> None:
    before = trail()
    with pytest.raises(jsonsafe.Unstorable, match="subject_id: at most 64"), transaction.atomic():
        audit_record(
            verb=Verb.AGENT_CREATED, actor=SYSTEM, subject_type="agent", subject_id="9" * 65
        )
    assert trail() == before


def test_a_hosted_program_asking_for_unstorable_arguments_gets_a_clear_refusal(
    make_agent: Any,
) -> None:
    agent = make_agent("nan-asker", f"{__name__}.asks_for_nan", ALLOW_ALL_TESTS)
    run = run_start(agent=agent, input={})
    execute_run(run.pk)
    run.refresh_from_db()
    action = Action.objects.get(run=run, seq=1)
    assert action.status == Action.Status.INVALID
    assert "numbers must be finite" in action.reason
    assert run.status == Run.Status.SUCCEEDED
    assert run.output == {"refused": action.reason}


@program
def asks_for_nan(ctx: Any, input: dict[str, Any]) -> dict[str, Any]:
    try:
        ctx.tool("test.count", label="x", n=math.nan)
    except ActionError as refused:
        return {"refused": refused.reason}
    return {"refused": ""}


@tool("test.fails_with_nul", schema={"type": "object"})
def fails_with_nul(call: ToolCall) -> dict[str, Any]:
    raise RuntimeError("upstream said \x00 and \ud800")


@program
def fails_twice_with_nul(ctx: Any, input: dict[str, Any]) -> dict[str, Any]:
    with contextlib.suppress(ActionError):
        ctx.tool("test.fails_with_nul")
    raise ValueError("the program gives up \x00")


def test_an_agents_own_error_text_is_stored_escaped_and_the_run_ends_failed(
    make_agent: Any,
) -> None:
    agent = make_agent("nul-raiser", f"{__name__}.fails_twice_with_nul", ALLOW_ALL_TESTS)
    run = run_start(agent=agent, input={})
    execute_run(run.pk)
    run.refresh_from_db()
    action = Action.objects.get(run=run, seq=1)
    assert action.status == Action.Status.FAILED
    assert action.error == "RuntimeError: upstream said \\u0000 and \\ud800"
    assert run.status == Run.Status.FAILED
    assert run.error == "ValueError: the program gives up \\u0000"
    assert AuditEvent.objects.filter(run_id=run.pk, verb=Verb.RUN_FAILED).exists()


UNSTORABLE_KEYS = {"nul": "a\x00", "surrogate": "\udfff", "long-nul": "k" * 300 + "\x00"}


@program
def asks_with_an_unstorable_key(ctx: Any, input: dict[str, Any]) -> dict[str, Any]:
    try:
        ctx.tool("test.count", label="x", **{UNSTORABLE_KEYS[input["key"]]: 1})
    except ActionError as refused:
        return {"refused": refused.reason}
    return {"refused": ""}


@pytest.mark.parametrize("which", sorted(UNSTORABLE_KEYS))
def test_a_hosted_program_asking_with_an_unstorable_argument_name_gets_a_clear_refusal(
    make_agent: Any, which: str
) -> None:
    # The refused step is journaled with its arguments described, names too: a NUL or a
    # lone surrogate in a name would make the journal row itself unstorable.
    agent = make_agent("key-asker", f"{__name__}.asks_with_an_unstorable_key", ALLOW_ALL_TESTS)
    run = run_start(agent=agent, input={"key": which})
    execute_run(run.pk)
    run.refresh_from_db()
    action = Action.objects.get(run=run, seq=1)
    assert action.status == Action.Status.INVALID
    assert "a key" in action.reason
    assert run.status == Run.Status.SUCCEEDED
    assert run.output == {"refused": action.reason}
    jsonsafe.plain_json(action.requested_args)  # storable, and stored
    assert all(len(name) <= 200 for name in action.requested_args)


@pytest.mark.parametrize("which", sorted(UNSTORABLE_KEYS))
def test_a_remote_step_with_an_unstorable_argument_name_is_journaled_invalid(
    remote_agent: Agent, world: Any, which: str
) -> None:
    # What the MCP gateway passes on as it came (agents.mcp.server): the HTTP API refuses
    # such a body before it reaches the gateway.
    key = apikey_create(agent=remote_agent, name="prod", user=world.admin)[0]
    run = remote.remote_run_start(key=key, input={})
    args = {"label": "x", UNSTORABLE_KEYS[which]: 1}
    answer = remote.remote_action_submit(run=run, seq=1, tool="test.count", args=args)
    assert answer["decision"] == "deny" and "a key" in answer["reason"]
    assert Action.objects.get(run=run, seq=1).status == Action.Status.INVALID
