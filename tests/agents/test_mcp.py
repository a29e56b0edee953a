"""Baton's MCP gateway against the console served by uvicorn, with a real upstream MCP
server (tests/support/mcp_upstream.py) that appends every call it receives to a ledger
file, and the SDK's own Streamable HTTP client as the agent."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import anyio.from_thread
import httpx
import mcp_types as types
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from agents.catalog import Invalid
from agents.mcp import catalog
from agents.mcp.services import mcp_server_add, mcp_server_remove
from agents.models import Action, Agent, McpServer, Run
from agents.policy import parse_policy
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
from tests.conftest import Server, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

UPSTREAM = Path(__file__).resolve().parents[1] / "support" / "mcp_upstream.py"
POLICY = {
    "rules": [
        {"tool": "payments.pay", "when": "amount <= 100", "effect": "allow"},
        {"tool": "payments.pay", "when": "amount > 10000", "effect": "deny", "reason": "too big"},
        {"tool": "payments.pay", "effect": "approve", "reason": "a person checks payouts"},
        {"tool": "lookup", "effect": "allow"},
        {"tool": "email.*", "effect": "shadow"},
        {"tool": "admin.*", "effect": "deny", "reason": "never"},
        {"tool": "admin.wipe", "effect": "allow"},
    ]
}


# --- which tools the live policy can ever admit (no server needed) -----------------------


@pytest.mark.parametrize(
    ("rules", "tool", "visible"),
    [
        ([], "lookup", False),  # default deny
        ([{"tool": "lookup", "effect": "allow"}], "lookup", True),
        ([{"tool": "look*", "effect": "approve"}], "lookup", True),
        ([{"tool": "*", "effect": "shadow"}], "lookup", True),
        ([{"tool": "other", "effect": "allow"}], "lookup", False),
        # An unconditional deny first blocks every later rule for the tool.
        ([{"tool": "*", "effect": "deny"}, {"tool": "lookup", "effect": "allow"}], "lookup", False),
        # A conditional deny blocks only some calls: the allow after it can still match.
        (
            [
                {"tool": "lookup", "when": "q == 'x'", "effect": "deny"},
                {"tool": "lookup", "effect": "allow"},
            ],
            "lookup",
            True,
        ),
        # A conditional allow may match.
        ([{"tool": "lookup", "when": "q == 'x'", "effect": "allow"}], "lookup", True),
        # Only deny rules, conditional or not: nothing could ever admit it.
        ([{"tool": "lookup", "when": "q == 'x'", "effect": "deny"}], "lookup", False),
        # Globs are case-sensitive and whole-name, like the gateway's.
        ([{"tool": "Lookup", "effect": "allow"}], "lookup", False),
        ([{"tool": "payments.*", "effect": "allow"}], "payments", False),
    ],
)
def test_a_tool_is_listed_only_when_some_rule_could_admit_it(
    rules: list[Any], tool: str, visible: bool
) -> None:
    assert catalog.may_ever_pass(parse_policy({"rules": rules}), tool) is visible


def test_a_name_two_servers_offer_is_prefixed_with_each_servers_name() -> None:
    schema = {"type": "object"}
    a = catalog.Upstream(1, "crm", "stdio", ("x",), "")
    b = catalog.Upstream(2, "erp", "stdio", ("x",), "")
    built = catalog.build(
        [
            (
                a,
                [
                    {"name": "lookup", "inputSchema": schema},
                    {"name": "only.a", "inputSchema": schema},
                ],
            ),
            (
                b,
                [
                    {"name": "lookup", "inputSchema": schema},
                    {"name": "bad", "inputSchema": {"type": 5}},
                ],
            ),
        ]
    )
    assert sorted(built) == ["crm.lookup", "erp.lookup", "only.a"]
    assert built["erp.lookup"].server == b and built["erp.lookup"].upstream_name == "lookup"


# --- registering servers ---------------------------------------------------------------------


@pytest.fixture
def agent(world: Any) -> Agent:
    agent = agent_create(
        slug="ledger-bot", name="Ledger bot", team=world.claims, kind=Agent.Kind.REMOTE
    )
    version = version_create(agent=agent, program="", policy=POLICY)
    version_publish(version=version, user=None, reason="set-up")
    agent.refresh_from_db()
    return agent


def test_registering_a_server_is_audited_and_checks_its_command(agent: Agent, world: Any) -> None:
    server = mcp_server_add(
        agent=agent,
        user=world.admin,
        name="ledger",
        transport="stdio",
        command=[sys.executable, str(UPSTREAM), "/tmp/x"],  # noqa: S108
    )
    added = AuditEvent.objects.get(verb="mcp_server.added")
    assert added.payload["after"]["command"][0] == sys.executable
    with pytest.raises(Invalid) as bad:
        mcp_server_add(
            agent=agent, user=world.admin, name="shell", transport="stdio", command=["/bin/sh"]
        )
    assert bad.value.field == "command" and "BATON_MCP_STDIO_COMMANDS" in str(bad.value)
    with pytest.raises(Invalid):
        mcp_server_add(
            agent=agent, user=world.admin, name="ledger", transport="http", url="http://x"
        )
    with pytest.raises(Invalid):
        mcp_server_add(agent=agent, user=world.admin, name="web", transport="http", url="ftp://x")
    assert McpServer.objects.count() == 1
    mcp_server_remove(server=server, user=world.admin)
    removed = AuditEvent.objects.get(verb="mcp_server.removed")
    assert removed.payload["before"]["name"] == "ledger" and not McpServer.objects.exists()


def test_an_admin_of_another_team_cannot_see_or_change_the_servers(
    agent: Agent, world: Any, client: Any
) -> None:
    from agents import roles

    other = type(world.admin).objects.create_user("olga")
    roles.role_grant(user=other, role=roles.AGENT_ADMIN, target=world.support)
    client.force_login(other)
    assert client.get(f"/agents/{agent.slug}/mcp/").status_code == 404
    response = client.post(
        f"/agents/{agent.slug}/mcp/add", {"name": "x", "transport": "http", "url": "http://x"}
    )
    assert response.status_code == 404 and not McpServer.objects.exists()
    client.force_login(world.supervisor)
    assert client.get(f"/agents/{agent.slug}/mcp/").status_code == 403
    client.force_login(world.admin)
    page = client.post(
        f"/agents/{agent.slug}/mcp/add",
        {"name": "crm", "transport": "http", "url": "http://crm/mcp"},
    )
    assert page.status_code == 302 and McpServer.objects.get().url == "http://crm/mcp"
    bad = client.post(f"/agents/{agent.slug}/mcp/add", {"name": "Bad Name", "transport": "http"})
    assert bad.status_code == 400 and b'data-error="name"' in bad.content


def test_a_hosted_agent_takes_no_mcp_servers(world: Any) -> None:
    hosted = agent_create(slug="h", name="H", team=world.claims)
    with pytest.raises(ServiceError):
        mcp_server_add(agent=hosted, user=None, name="x", transport="http", url="http://x")


# --- the gateway, live -----------------------------------------------------------------------


class Agent_:
    """The agent: the SDK's client on a blocking portal, so the test stays synchronous
    (the ORM and approval_decide run here, the client on the portal's loop)."""

    def __init__(self, portal: Any, stack: ExitStack, url: str, key: str) -> None:
        self.portal = portal
        http = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})
        read, write = stack.enter_context(
            portal.wrap_async_context_manager(
                streamable_http_client(f"{url}/mcp/", http_client=http)
            )
        )
        self.session: ClientSession = stack.enter_context(
            portal.wrap_async_context_manager(ClientSession(read, write))
        )
        portal.call(self.session.initialize)

    def tools(self) -> dict[str, types.Tool]:
        return {t.name: t for t in self.portal.call(self.session.list_tools).tools}

    def call(self, name: str, **args: Any) -> types.CallToolResult:
        return self.portal.call(self.session.call_tool, name, args)

    def call_soon(self, name: str, **args: Any) -> Any:
        return self.portal.start_task_soon(self.session.call_tool, name, args)


def text(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    return tmp_path / "ledger.jsonl"


def reached(ledger: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in ledger.read_text().splitlines()] if ledger.exists() else []


@pytest.fixture
def served(
    agent: Agent, world: Any, ledger: Path, task_queue: str, tmp_path: Path
) -> Iterator[Any]:
    mcp_server_add(
        agent=agent,
        user=world.admin,
        name="ledger",
        transport="stdio",
        command=[sys.executable, str(UPSTREAM), str(ledger)],
    )
    server = Server(task_queue, tmp_path)
    server.env["BATON_MCP_HOLD_WAIT_SECONDS"] = "20"
    server.start()
    yield server
    server.stop()


@pytest.fixture
def key(agent: Agent) -> str:
    return apikey_create(agent=agent, name="mcp", user=None)[1]


@pytest.fixture
def connect(served: Any) -> Iterator[Any]:
    with anyio.from_thread.start_blocking_portal() as portal, ExitStack() as stack:
        yield lambda key: Agent_(portal, stack, served.url, key)


def test_tools_list_shows_only_what_the_live_policy_can_admit_with_schemas(
    connect: Any, key: str
) -> None:
    tools = connect(key).tools()
    # admin.wipe: an unconditional deny of admin.* comes before the rule that allows it.
    assert sorted(tools) == ["email.send", "lookup", "payments.pay"]
    schema = tools["payments.pay"].input_schema
    assert schema["required"] == ["amount", "to"]
    assert schema["properties"]["amount"]["type"] == "integer"


def test_an_allowed_call_reaches_the_upstream_once_and_is_journaled(
    connect: Any, key: str, ledger: Path
) -> None:
    agent = connect(key)
    result = agent.call("payments.pay", amount=80, to="ann")
    assert not result.is_error and text(result) == "paid 80 to ann"
    assert reached(ledger) == [{"tool": "payments.pay", "amount": 80, "to": "ann"}]
    assert text(agent.call("lookup", q="ann")) == "found ann"
    run = Run.objects.get()
    steps = list(run.actions.order_by("seq"))
    assert [(a.seq, a.name, a.status) for a in steps] == [
        (1, "payments.pay", "succeeded"),
        (2, "lookup", "succeeded"),
    ]
    assert steps[0].args == {"amount": 80, "to": "ann"}
    result = steps[0].result
    assert result is not None and result["content"][0]["text"] == "paid 80 to ann"
    events = AuditEvent.objects.filter(run_id=run.pk).order_by("seq")
    verbs = list(events.values_list("verb", flat=True))
    assert verbs == [
        "run.started",
        "action.allowed",
        "action.succeeded",
        "action.allowed",
        "action.succeeded",
    ]
    assert events.get(verb="run.started").payload["input"] == {"via": "mcp"}


def test_a_denied_call_never_reaches_the_upstream(connect: Any, key: str, ledger: Path) -> None:
    agent = connect(key)
    big = agent.call("payments.pay", amount=20000, to="mallory")
    assert big.is_error and text(big) == "denied by Baton: too big"
    # A tool tools/list hides, called anyway: it passes the gateway and is denied there.
    hidden = agent.call("admin.wipe", confirm=True)
    assert hidden.is_error and text(hidden) == "denied by Baton: never"
    assert reached(ledger) == []
    assert list(Action.objects.order_by("seq").values_list("status", flat=True)) == [
        "denied",
        "denied",
    ]
    assert AuditEvent.objects.filter(verb="action.denied").count() == 2


def test_an_unknown_tool_is_refused_and_nothing_is_created(connect: Any, key: str) -> None:
    result = connect(key).call("payments.refund", amount=1)
    assert result.is_error and "no tool named 'payments.refund'" in text(result)
    assert not Run.objects.exists()


def test_a_shadowed_call_is_simulated_and_not_forwarded(
    connect: Any, key: str, ledger: Path
) -> None:
    result = connect(key).call("email.send", to="ann", body="hi")
    assert not result.is_error and json.loads(text(result)) == {"simulated": True}
    assert reached(ledger) == []
    assert Action.objects.get().status == "shadowed"


def test_a_held_call_waits_for_the_approval_then_runs_once(
    connect: Any, key: str, ledger: Path, world: Any
) -> None:
    agent = connect(key)
    call = agent.call_soon("payments.pay", amount=500, to="bob")
    request = wait_for(lambda: ApprovalRequest.objects.filter(status="pending").first())
    assert reached(ledger) == [] and not call.done()
    approval_decide(
        request_id=request.pk,
        user=world.supervisor,
        verdict="approve",
        seen_args_hash=request.args_hash,
    )
    result = call.result(timeout=30)
    assert not result.is_error and text(result) == "paid 500 to bob"
    assert reached(ledger) == [{"tool": "payments.pay", "amount": 500, "to": "bob"}]
    assert Action.objects.get().status == "succeeded"


def test_a_call_still_held_when_the_wait_ends_resumes_on_retry(
    agent: Agent, world: Any, ledger: Path, task_queue: str, tmp_path: Path, key: str
) -> None:
    mcp_server_add(
        agent=agent,
        user=world.admin,
        name="ledger",
        transport="stdio",
        command=[sys.executable, str(UPSTREAM), str(ledger)],
    )
    server = Server(task_queue, tmp_path)
    server.env["BATON_MCP_HOLD_WAIT_SECONDS"] = "0.5"
    server.start()
    try:
        with anyio.from_thread.start_blocking_portal() as portal, ExitStack() as stack:
            client = Agent_(portal, stack, server.url, key)
            first = client.call("payments.pay", amount=700, to="cy")
            request = ApprovalRequest.objects.get()
            assert first.is_error
            assert text(first).startswith(f"pending approval: request {request.pk} (step 1")
            again = client.call("payments.pay", amount=700, to="cy")
            assert again.is_error and text(again).startswith("pending approval")
            approval_decide(
                request_id=request.pk,
                user=world.supervisor,
                verdict="approve",
                seen_args_hash=request.args_hash,
            )
            done = client.call("payments.pay", amount=700, to="cy")
            assert text(done) == "paid 700 to cy"
        # The client ended the session (DELETE): its run is finished.
        wait_for(lambda: Run.objects.get().status == Run.Status.SUCCEEDED, message="run finished")
    finally:
        server.stop()
    # The retries resumed step 1: one step, one approval request, one upstream call.
    assert list(Action.objects.values_list("seq", "status")) == [(1, "succeeded")]
    assert reached(ledger) == [{"tool": "payments.pay", "amount": 700, "to": "cy"}]


def test_a_halted_agents_call_is_refused(
    connect: Any, key: str, agent: Agent, ledger: Path, world: Any
) -> None:
    client = connect(key)
    assert text(client.call("lookup", q="a")) == "found a"
    killswitch_engage(
        scope="agent", mode="halt", reason="incident", user=world.supervisor, agent=agent
    )
    result = client.call("lookup", q="b")
    assert result.is_error and "halted" in text(result)
    assert reached(ledger) == [{"tool": "lookup", "q": "a"}]


def test_a_wrong_or_revoked_key_gets_401(served: Any, key: str, agent: Agent) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    for presented in ("", "Bearer bk_nope.nope"):
        answer = httpx.post(f"{served.url}/mcp/", json=body, headers={"Authorization": presented})
        assert answer.status_code == 401 and answer.json()["code"] == "unauthorized"
    apikey_revoke(key=agent.api_keys.get(), user=None, reason="leaked")
    answer = httpx.post(f"{served.url}/mcp/", json=body, headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 401 and answer.json()["error"] == "this API key was revoked"
