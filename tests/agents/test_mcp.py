"""Baton's MCP gateway against the console served by uvicorn, with a real upstream MCP
server (tests/support/mcp_upstream.py) whose tools write the demo's sandbox tables
(Payment, SentEmail) in the test database, and the SDK's own Streamable HTTP client as the
agent. What reached the upstream is read from those tables."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import anyio.from_thread
import httpx
import pytest
from mcp.shared.exceptions import MCPError

from agents.api import BODY_TOO_LARGE
from agents.catalog import Invalid
from agents.mcp import catalog
from agents.mcp.services import mcp_server_add, mcp_server_remove
from agents.models import Action, Agent, McpServer, Payment, Run
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
from tests.support.mcp_agent import UPSTREAM, McpAgent, emails, payments, text, upstream_command

pytestmark = pytest.mark.django_db(transaction=True)
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


@pytest.fixture
def served(agent: Agent, world: Any, task_queue: str, tmp_path: Path) -> Iterator[Any]:
    mcp_server_add(
        agent=agent,
        user=world.admin,
        name="ledger",
        transport="stdio",
        command=upstream_command(),
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
        yield lambda key: McpAgent(portal, stack, served.url, key)


def test_tools_list_shows_only_what_the_live_policy_can_admit_with_schemas(
    connect: Any, key: str, agent: Agent
) -> None:
    client = connect(key)
    tools = client.tools()
    # admin.wipe: an unconditional deny of admin.* comes before the rule that allows it.
    assert sorted(tools) == ["email.send", "lookup", "payments.pay"]
    schema = tools["payments.pay"].input_schema
    assert schema["required"] == ["amount", "to"]
    assert schema["properties"]["amount"]["type"] == "integer"
    # The live policy, read at every listing: a new version that denies payouts hides them.
    version = version_create(
        agent=agent,
        program="",
        policy={"rules": [{"tool": "payments.*", "effect": "deny"}, *POLICY["rules"]]},
    )
    version_publish(version=version, user=None, reason="no payouts today")
    assert sorted(client.tools()) == ["email.send", "lookup"]


def test_an_allowed_call_reaches_the_upstream_once_and_is_journaled(connect: Any, key: str) -> None:
    agent = connect(key)
    result = agent.call("payments.pay", amount=80, to="ann")
    payment = Payment.objects.get()
    assert not result.is_error and text(result) == f"paid 80 to ann (payment {payment.pk})"
    assert payments() == [("ann", 80)]
    # The upstream read what it did from its table, through the gateway: one payment.
    assert text(agent.call("lookup", q="ann")) == "found ann: 1 payment(s)"
    run = Run.objects.get()
    steps = list(run.actions.order_by("seq"))
    assert [(a.seq, a.name, a.status) for a in steps] == [
        (1, "payments.pay", "succeeded"),
        (2, "lookup", "succeeded"),
    ]
    assert steps[0].args == {"amount": 80, "to": "ann"}
    # The step's idempotency key travelled to the upstream, which keyed its payment by it.
    assert payment.idempotency_key == steps[0].idempotency_key
    result = steps[0].result
    assert (
        result is not None
        and result["content"][0]["text"] == f"paid 80 to ann (payment {payment.pk})"
    )
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


def test_a_denied_call_never_reaches_the_upstream(connect: Any, key: str) -> None:
    agent = connect(key)
    assert not agent.call("payments.pay", amount=50, to="ann").is_error
    before = list(Payment.objects.values_list("pk", "payee", "amount"))
    big = agent.call("payments.pay", amount=20000, to="mallory")
    assert big.is_error and text(big) == "denied by Baton: too big"
    # A tool tools/list hides, called anyway: it passes the gateway and is denied there.
    # Had it reached the upstream, it would have wiped the payment above.
    hidden = agent.call("admin.wipe", confirm=True)
    assert hidden.is_error and text(hidden) == "denied by Baton: never"
    assert list(Payment.objects.values_list("pk", "payee", "amount")) == before
    assert list(Action.objects.order_by("seq").values_list("name", "status", "reason")) == [
        ("payments.pay", "succeeded", "rule 1 (payments.pay): allow"),
        ("payments.pay", "denied", "too big"),
        ("admin.wipe", "denied", "never"),
    ]
    denied = AuditEvent.objects.filter(verb="action.denied").order_by("seq")
    assert [e.payload["tool"] for e in denied] == ["payments.pay", "admin.wipe"]


def test_a_shadowed_call_is_simulated_and_not_forwarded(connect: Any, key: str) -> None:
    result = connect(key).call("email.send", to="ann", body="hi")
    assert not result.is_error and json.loads(text(result)) == {"simulated": True}
    assert emails() == []
    assert Action.objects.get().status == "shadowed"


def test_a_held_call_waits_for_the_approval_then_runs_once(
    connect: Any, key: str, world: Any
) -> None:
    agent = connect(key)
    call = agent.call_soon("payments.pay", amount=500, to="bob")
    request = wait_for(lambda: ApprovalRequest.objects.filter(status="pending").first())
    assert payments() == [] and not call.done()
    approval_decide(
        request_id=request.pk,
        user=world.supervisor,
        verdict="approve",
        seen_args_hash=request.args_hash,
    )
    result = call.result(timeout=30)
    assert not result.is_error and text(result).startswith("paid 500 to bob")
    assert payments() == [("bob", 500)]
    assert Action.objects.get().status == "succeeded"


def test_a_held_call_reaches_the_upstream_with_the_arguments_a_person_edited(
    connect: Any, key: str, world: Any
) -> None:
    agent = connect(key)
    call = agent.call_soon("payments.pay", amount=900, to="bob")
    request = wait_for(lambda: ApprovalRequest.objects.filter(status="pending").first())
    # An edit is checked against the upstream tool's own schema (its stored listing).
    with pytest.raises(ServiceError, match="amount: 'lots' is not of type 'integer'"):
        approval_decide(
            request_id=request.pk,
            user=world.supervisor,
            verdict="approve",
            seen_args_hash=request.args_hash,
            edited_args={"amount": "lots", "to": "bob"},
        )
    assert payments() == [] and not call.done()
    approval_decide(
        request_id=request.pk,
        user=world.supervisor,
        verdict="approve",
        seen_args_hash=request.args_hash,
        edited_args={"amount": 450, "to": "bob's savings"},
    )
    result = call.result(timeout=30)
    assert not result.is_error and text(result).startswith("paid 450 to bob's savings")
    assert payments() == [("bob's savings", 450)]
    action = Action.objects.get()
    assert action.requested_args == {"amount": 900, "to": "bob"}
    assert action.args == {"amount": 450, "to": "bob's savings"}
    assert action.status == "succeeded"


def test_a_call_still_held_when_the_wait_ends_resumes_on_retry(
    agent: Agent, world: Any, task_queue: str, tmp_path: Path, key: str
) -> None:
    mcp_server_add(
        agent=agent,
        user=world.admin,
        name="ledger",
        transport="stdio",
        command=upstream_command(),
    )
    server = Server(task_queue, tmp_path)
    server.env["BATON_MCP_HOLD_WAIT_SECONDS"] = "0.5"
    server.start()
    try:
        with anyio.from_thread.start_blocking_portal() as portal, ExitStack() as stack:
            client = McpAgent(portal, stack, server.url, key)
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
            assert text(done).startswith("paid 700 to cy")
        # The client ended the session (DELETE): its run is finished.
        wait_for(lambda: Run.objects.get().status == Run.Status.SUCCEEDED, message="run finished")
    finally:
        server.stop()
    # The retries resumed step 1: one step, one approval request, one upstream call.
    assert list(Action.objects.values_list("seq", "status")) == [(1, "succeeded")]
    assert payments() == [("cy", 700)]


def test_a_kill_switch_stops_the_next_call(
    connect: Any, key: str, agent: Agent, world: Any
) -> None:
    client = connect(key)
    assert not client.call("payments.pay", amount=10, to="a").is_error
    killswitch_engage(
        scope="agent", mode="halt", reason="incident", user=world.supervisor, agent=agent
    )
    result = client.call("payments.pay", amount=20, to="b")
    # A halt cancels the agent's runs: the session's run is the one the answer names.
    assert result.is_error and text(result) == "Ledger bot is halted: the run was cancelled"
    assert Run.objects.get().status == Run.Status.CANCELLED
    assert payments() == [("a", 10)]
    # The refused call took no step: only the first one is journaled.
    assert list(Action.objects.values_list("seq", "status")) == [(1, "succeeded")]


# --- bad input ------------------------------------------------------------------------------


def test_an_unknown_tool_is_refused_and_nothing_is_created(connect: Any, key: str) -> None:
    result = connect(key).call("payments.refund", amount=1)
    assert result.is_error and text(result) == (
        "no tool named 'payments.refund' is offered to this agent (see tools/list)"
    )
    assert not Run.objects.exists() and not Action.objects.exists() and payments() == []


@pytest.mark.parametrize(
    ("args", "errors"),
    [
        ({"amount": "80", "to": "ann"}, "amount: '80' is not of type 'integer'"),
        ({"amount": 80}, "arguments: 'to' is a required property"),
        ({"amount": 8.5, "to": ["ann"]}, "amount: 8.5 is not of type 'integer'"),
    ],
)
def test_arguments_that_break_the_upstream_schema_are_refused_by_baton(
    connect: Any, key: str, args: dict[str, Any], errors: str
) -> None:
    result = connect(key).call("payments.pay", **args)
    # Baton checks the arguments against the schema the upstream listed, before any rule:
    # the step is journaled as invalid and the upstream never sees it.
    assert result.is_error and text(result).startswith("denied by Baton: ")
    assert errors in text(result)
    assert payments() == []
    action = Action.objects.get()
    assert (action.status, action.requested_args) == ("invalid", args)
    assert AuditEvent.objects.filter(verb="action.invalid").count() == 1


def test_malformed_requests_are_refused_and_create_nothing(served: Any, key: str) -> None:
    auth = {"Authorization": f"Bearer {key}"}
    headers = {**auth, "Accept": "application/json, text/event-stream"}
    not_json = httpx.post(
        f"{served.url}/mcp/",
        content=b"{not json",
        headers={**headers, "Content-Type": "application/json"},
    )
    assert not_json.status_code == 400 and not_json.json()["error"]["code"] == -32700
    # A tools/call outside any session: the handshake comes first.
    call = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "payments.pay", "arguments": {"amount": 1, "to": "x"}},
    }
    orphan = httpx.post(f"{served.url}/mcp/", json=call, headers=headers)
    assert orphan.status_code == 400
    assert not Run.objects.exists() and payments() == []


def test_a_body_over_the_limit_is_a_413_declared_or_chunked(served: Any, key: str) -> None:
    headers = {
        "Authorization": f"Bearer {key}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
    }
    call: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": "tools/call"}
    call["params"] = {"name": "lookup"}
    big = json.dumps({**call, "params": {"name": "lookup", "arguments": {"q": "x" * 2**20}}})

    def chunks() -> Iterator[bytes]:  # no Content-Length: sent chunked
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536].encode()

    for content in (big.encode(), chunks()):
        answer = httpx.post(f"{served.url}/mcp/", content=content, headers=headers, timeout=30)
        assert answer.status_code == 413
        assert answer.json()["error"]["message"] == BODY_TOO_LARGE
    # Within the limit the SDK answers as ever: here, that a session comes first.
    small = httpx.post(f"{served.url}/mcp/", json=call, headers=headers, timeout=30)
    assert small.status_code == 400
    assert not Run.objects.exists() and not Action.objects.exists()


def test_a_wrong_or_revoked_key_gets_401(served: Any, key: str, agent: Agent) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    for presented in ("", "Bearer bk_nope.nope"):
        answer = httpx.post(f"{served.url}/mcp/", json=body, headers={"Authorization": presented})
        assert answer.status_code == 401 and answer.json()["code"] == "unauthorized"
    apikey_revoke(key=agent.api_keys.get(), user=None, reason="leaked")
    answer = httpx.post(f"{served.url}/mcp/", json=body, headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 401 and answer.json()["error"] == "this API key was revoked"
    assert not Run.objects.exists()


def test_a_session_whose_key_is_revoked_stops_at_its_next_call(
    connect: Any, key: str, agent: Agent
) -> None:
    client = connect(key)
    assert not client.call("payments.pay", amount=5, to="ann").is_error
    apikey_revoke(key=agent.api_keys.get(), user=None, reason="leaked")
    # The request is answered 401 (the SDK's client reports it as an error response).
    with pytest.raises(MCPError, match="error response"):
        client.call("payments.pay", amount=6, to="ann")
    assert payments() == [("ann", 5)] and Action.objects.count() == 1
