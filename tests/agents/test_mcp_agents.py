"""Agents through Baton's MCP gateway as people see them: an off-the-shelf agent framework
(Pydantic AI, with a scripted model) reaching a governed upstream tool, and a held MCP
call, a remote agent's HTTP step and a hosted agent's step leaving the same trail, in the
same approval queue and the same live view."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import anyio.from_thread
import httpx
import pytest
from django.test import Client
from pydantic_ai import Agent as FrameworkAgent
from pydantic_ai.mcp import MCPToolset
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from agents.mcp.services import mcp_server_add
from agents.models import Agent, Run
from agents.remote import apikey_create
from agents.runtime import execute_run
from agents.services import agent_create, run_start, version_create, version_publish
from approvals.models import ApprovalRequest
from approvals.services import approval_decide
from audit.models import AuditEvent
from tests.conftest import Server, wait_for
from tests.support.mcp_agent import McpAgent, payments, text, upstream_command

pytestmark = pytest.mark.django_db(transaction=True)


def remote_agent(world: Any, slug: str, rules: list[dict[str, Any]]) -> Agent:
    agent = agent_create(slug=slug, name=slug, team=world.claims, kind=Agent.Kind.REMOTE)
    version = version_create(agent=agent, program="", policy={"rules": rules})
    version_publish(version=version, user=None, reason="set-up")
    agent.refresh_from_db()
    return agent


@pytest.fixture
def server(task_queue: str, tmp_path: Path) -> Iterator[Server]:
    server = Server(task_queue, tmp_path)
    server.env["BATON_MCP_HOLD_WAIT_SECONDS"] = "20"
    server.start()
    yield server
    server.stop()


def with_upstream(agent: Agent, world: Any) -> str:
    """Registers the sandbox upstream for `agent`; returns a new API key of it."""
    mcp_server_add(
        agent=agent, user=world.admin, name="ledger", transport="stdio", command=upstream_command()
    )
    return apikey_create(agent=agent, name="k", user=None)[1]


# --- an off-the-shelf framework ---------------------------------------------------------


def test_a_pydantic_ai_agent_with_a_scripted_model_pays_through_baton(
    world: Any, server: Server
) -> None:
    agent = remote_agent(
        world,
        "framework-bot",
        [
            {"tool": "payments.pay", "when": "amount <= 100", "effect": "allow"},
            {"tool": "payments.pay", "effect": "deny", "reason": "above the agent's limit"},
            {"tool": "admin.*", "effect": "deny", "reason": "never"},
        ],
    )
    key = with_upstream(agent, world)
    seen: dict[str, Any] = {}

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        """The scripted model: pays twice at once, one within the limit and one above,
        then answers with what the tools said."""
        if len(messages) == 1:
            seen["tools"] = sorted(t.name for t in info.function_tools)
            return ModelResponse(
                parts=[
                    ToolCallPart("payments.pay", {"amount": 80, "to": "ann"}, tool_call_id="a"),
                    ToolCallPart("payments.pay", {"amount": 900, "to": "bob"}, tool_call_id="b"),
                ]
            )
        said = sorted(
            str(getattr(part, "content", ""))
            for part in messages[-1].parts
            if getattr(part, "tool_call_id", None) in ("a", "b")
        )
        seen["said"] = said
        return ModelResponse(parts=[TextPart(" | ".join(said))])

    toolset = MCPToolset(f"{server.url}/mcp/", headers={"Authorization": f"Bearer {key}"})
    bot = FrameworkAgent(FunctionModel(model), toolsets=[toolset])
    answer = bot.run_sync("pay ann 80 and bob 900").output

    # The framework saw only what the live policy can admit.
    assert seen["tools"] == ["payments.pay"]
    # The allowed payment reached the upstream once; the denied one never did, and the
    # model read Baton's refusal.
    assert payments() == [("ann", 80)]
    assert "paid 80 to ann" in answer and "denied by Baton: above the agent's limit" in answer
    run = Run.objects.get(agent=agent)
    assert list(run.actions.order_by("name", "status").values_list("status", "args")) == [
        ("denied", {"amount": 900, "to": "bob"}),
        ("succeeded", {"amount": 80, "to": "ann"}),
    ]
    verbs = sorted(AuditEvent.objects.filter(run_id=run.pk).values_list("verb", flat=True))
    assert verbs[:4] == ["action.allowed", "action.denied", "action.succeeded", "run.started"]
    # The framework closed its session: the run is finished.
    wait_for(lambda: Run.objects.get(pk=run.pk).status == Run.Status.SUCCEEDED)


# --- the same trail, queue and live view as a hosted agent --------------------------------


def trail(run_id: int) -> list[tuple[str, list[str]]]:
    """The run's action and approval events: verb and payload keys, in order."""
    events = AuditEvent.objects.filter(run_id=run_id).order_by("seq")
    return [
        (e.verb, sorted(e.payload)) for e in events if e.verb.startswith(("action.", "approval."))
    ]


def queued(supervisor: Any) -> str:
    client = Client()
    client.force_login(supervisor)
    page = client.get("/approvals/")
    assert page.status_code == 200
    return page.content.decode()


def live(supervisor: Any) -> str:
    client = Client()
    client.force_login(supervisor)
    page = client.get("/live/events?after=0")
    assert page.status_code == 200
    return page.content.decode()


def approve(request: ApprovalRequest, user: Any) -> None:
    approval_decide(
        request_id=request.pk, user=user, verdict="approve", seen_args_hash=request.args_hash
    )


def test_mcp_http_and_hosted_steps_leave_the_same_trail_queue_and_live_view(
    world: Any, server: Server, make_agent: Any
) -> None:
    supervisor = world.supervisor

    # A hosted agent's held payout, approved, then run.
    hosted = make_agent(
        "hosted-payer",
        "tests.support.agents.payout_with_fallback",
        {"rules": [{"tool": "test.pay", "effect": "approve"}]},
    )
    hosted_run = run_start(agent=hosted, input={"claim_id": "c1", "amount": 500})
    execute_run(hosted_run.pk)
    request = ApprovalRequest.objects.get(run=hosted_run)
    assert f"/approvals/{request.pk}/" in queued(supervisor)
    approve(request, supervisor)
    execute_run(hosted_run.pk)
    assert Run.objects.get(pk=hosted_run.pk).status == Run.Status.SUCCEEDED

    # A remote agent's step over the HTTP API, held, approved, run and reported.
    http_agent = remote_agent(world, "http-payer", [{"tool": "test.pay", "effect": "approve"}])
    api = httpx.Client(
        base_url=f"{server.url}/api/v1",
        headers={
            "Authorization": f"Bearer {apikey_create(agent=http_agent, name='k', user=None)[1]}"
        },
        timeout=30,
    )
    http_run = api.post("/runs", json={"input": {}}).json()["run"]
    step = {"seq": 1, "tool": "test.pay", "args": {"claim_id": "c2", "amount": 500}}
    assert api.post(f"/runs/{http_run}/steps", json=step).json()["decision"] == "pending"
    request = ApprovalRequest.objects.get(run_id=http_run)
    assert f"/approvals/{request.pk}/" in queued(supervisor)
    approve(request, supervisor)
    assert api.get(f"/runs/{http_run}/steps/1").json()["decision"] == "allow"
    api.post(f"/runs/{http_run}/steps/1/result", json={"ok": True, "result": {"paid": 500}})

    # An MCP call, held, approved while the agent waits, forwarded upstream.
    mcp_agent = remote_agent(world, "mcp-payer", [{"tool": "payments.pay", "effect": "approve"}])
    key = with_upstream(mcp_agent, world)
    with anyio.from_thread.start_blocking_portal() as portal, ExitStack() as stack:
        client = McpAgent(portal, stack, server.url, key)
        call = client.call_soon("payments.pay", amount=500, to="c3")
        request = wait_for(lambda: ApprovalRequest.objects.filter(agent=mcp_agent).first())
        mcp_run = request.run_id
        # In the supervisor's queue, and in their live view, while the agent waits.
        assert f"/approvals/{request.pk}/" in queued(supervisor)
        view = live(supervisor)
        assert f"run #{mcp_run}" in view and "action.held" in view
        approve(request, supervisor)
        assert text(call.result(timeout=30)).startswith("paid 500 to c3")
    assert payments()[-1] == ("c3", 500)

    # The same verbs with the same payload shapes, whichever way the agent came in.
    expected = trail(hosted_run.pk)
    assert [verb for verb, _ in expected] == [
        "action.held",
        "approval.requested",
        "approval.approved",
        "action.allowed",
        "action.succeeded",
    ]
    # A remote agent's reported outcome says how it came in ("via"); nothing else differs.
    remote = [
        (v, sorted([*keys, "via"]) if v == "action.succeeded" else keys) for v, keys in expected
    ]
    assert trail(http_run) == remote
    assert trail(mcp_run) == remote
    # Each is in the live view for the agent's supervisor, the outsider sees none of them.
    view = live(supervisor)
    for run in (hosted_run.pk, http_run, mcp_run):
        assert f"run #{run}" in view
    outsider = live(world.outsider)
    assert not any(f"run #{run}" in outsider for run in (hosted_run.pk, http_run, mcp_run))
