"""The permission matrix: every URL pattern of the console (read from the URLconf, so a new
URL is covered the day it is added) × every kind of person × ids of a team none of them
works in. No request answers 500, no 200 carries that team's data, nothing of it is
changed, and the live socket, the catch-up endpoint and the export keep it to themselves
(DESIGN section 10, invariant 6)."""

from __future__ import annotations

import re
from typing import Any

import pytest
import pytest_asyncio
from asgiref.sync import sync_to_async
from django.test import Client, RequestFactory
from django.urls import URLPattern, URLResolver, get_resolver

from agents import review, roles
from agents.demo.seed import CLAIMS_POLICY
from agents.models import Agent, AgentVersion, AlertRule, ApiKey, KillSwitch, McpServer, Team
from agents.rollout_views import seen_token
from agents.runtime import execute_run
from agents.services import killswitch_engage, run_start, team_create, version_create
from approvals.models import ApprovalRequest, PublishRequest
from approvals.publish import publish_request_open
from audit.models import AuditEvent
from tests.conftest import PASSWORD
from tests.console.visibility import Cast, export, live_seqs, open_socket

# One walk of every URL for every person (hundreds of requests): on a loaded CI machine it
# has taken past the suite's 300 s, so it gets longer before a hang is called a hang.
pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.asyncio,
    pytest.mark.timeout(900),
]

ANONYMOUS = "anonymous"
# Whose every view of the hidden team is refused: all but compliance, who reads everything.
OUTSIDERS = [r for r in Cast.ROLES if r != "compliance"] + [ANONYMOUS]
SIGNED_OUT = {ANONYMOUS, "deactivated"}
# What a POST carries: aimed at the hidden team wherever a form names a target.
POST_DATA = {
    "verdict": "approve",
    "reason": "matrix",
    "comment": "matrix",
    "mode": "halt",
    "scope": "team",
    "team": "hidden-team-x9",
    "agent": "hidden-bot-x9",
    "format": "jsonl",
    # People (issue 11): a new person, a grant or a model-wide role, aimed at the hidden team.
    "username": "matrix-x9",
    "target": "team:hidden-team-x9",
    "role": "Compliance",
    # Teams, agents and keys (issue 11): a new or changed agent or team in the hidden team.
    "name": "Matrix X9",
    "slug": "matrix-x9",
    "description": "matrix-x9",
    "kind": "remote",
    "owner": "hidden-lead-x9",
    "days": "30",
    "overlap_hours": "1",
    # The rollout (issue 11): publish the hidden agent's draft live with its admin's
    # password, or move it into a 100 % canary (the form's `seen` is added per sweep).
    "version": "2",
    "password": PASSWORD,
    "live": "1",
    "percent": "100",
    # The policy editor (issue 11): the hidden draft saved with a rule and a config of its own.
    "rules-count": "1",
    "rules-0-tool": "payments.pay",
    "rules-0-effect": "allow",
    "config": '{"model": "matrix-x9"}',
    # MCP servers (issue 12): an upstream server for the hidden agent.
    "transport": "http",
    "url": "http://matrix-x9.example/mcp",
    "command": "matrix-x9",
    # Alert rules (issue 14): a rule on the hidden team, or the hidden rule changed.
    "metric": "denials",
    "basis": "value",
    "comparison": "above",
    "threshold": "1",
    "clear_threshold": "0",
    "window_minutes": "5",
    "engage_breaker": "on",
    "enabled": "",
}
# Sessions end here, so these come last for each person.
LAST = {"logout"}


@pytest_asyncio.fixture(autouse=True)
async def _close_thread_connections() -> Any:
    yield
    from django.db import connections

    await sync_to_async(connections.close_all, thread_sensitive=True)()


class Hidden:
    """A team none of the matrix's people works in, with an agent, a run held for
    approval, an engaged switch and their events, every one carrying unique markers."""

    def __init__(self, world: Any, make_agent: Any) -> None:
        team = team_create(slug="hidden-team-x9", name="Hidden Team Xylo9")
        self.team = team
        self.agent = make_agent(
            "hidden-bot-x9", "agents.demo.programs.claim_payout", CLAIMS_POLICY, team=team
        )
        lead = type(world.outsider).objects.create_user("hidden-lead-x9")
        self.lead = lead
        roles.role_grant(user=lead, role=roles.SUPERVISOR, target=team)
        self.run = run_start(
            agent=self.agent,
            input={
                "claim_id": "CLM-HIDDEN-X9",
                "policyholder": "Quentin Xylomarker",
                "description": "hidden-description-x9",
                "amount": 4321.87,
            },
        )
        execute_run(self.run.pk)
        self.request = ApprovalRequest.objects.get(run=self.run)
        self.switch = killswitch_engage(
            scope="agent",
            mode="pause",
            reason="hidden-reason-x9",
            agent=self.agent,
            user=lead,
        )
        self.event = AuditEvent.objects.filter(agent_id=self.agent.pk).order_by("seq").first()
        # The rollout (issue 11): a draft v2, and a v3 waiting for a second admin of the
        # hidden team (four-eyes), asked by its admin (who has the matrix's password).
        Team.objects.filter(pk=team.pk).update(publish_needs_second_admin=True)
        admin = type(world.outsider).objects.create_user("hidden-admin-x9", password=PASSWORD)
        roles.role_grant(user=admin, role=roles.AGENT_ADMIN, target=team)
        self.draft = version_create(
            agent=self.agent, program="agents.demo.programs.claim_payout", policy={"rules": []}
        )
        self.publish = publish_request_open(
            version=version_create(
                agent=self.agent, program="agents.demo.programs.claim_payout", policy={"rules": []}
            ),
            user=admin,
            reason="hidden-reason-x9",
            live=True,
            password=PASSWORD,
            request=RequestFactory().post("/"),
        )
        # An upstream MCP server of the hidden agent (issue 12), written as it is stored
        # (the service takes only remote agents; the page must refuse either way).
        self.mcp_server = McpServer.objects.create(
            agent=self.agent, name="hidden-mcp-x9", transport="http", url="http://hidden-x9/mcp"
        )
        # An alert rule on the hidden agent (issue 14), firing.
        self.rule = AlertRule.objects.create(
            agent=self.agent,
            name="hidden-rule-x9",
            metric="denials",
            threshold=3,
            clear_threshold=1,
            state=AlertRule.State.FIRING,
            last_value=4,
        )
        self.agent.refresh_from_db()
        self.rollout = seen_token(self.agent)
        self.versions = list(AgentVersion.objects.filter(agent=self.agent).values().order_by("pk"))
        self.markers = [
            "hidden-team-x9",
            "Hidden Team Xylo9",
            "hidden-bot-x9",
            "Hidden Bot X9",
            "hidden-lead-x9",
            "CLM-HIDDEN-X9",
            "Quentin Xylomarker",
            "hidden-description-x9",
            "hidden-reason-x9",
            "hidden-rule-x9",
            f"/alerts/{self.rule.pk}/",
            "4321.87",
            "4,321.87",
            f"/runs/{self.run.pk}/",
            f"run #{self.run.pk}",
            f"/approvals/{self.request.pk}/",
            f"/switches/{self.switch.pk}/",
        ]

    def args(self) -> dict[str, Any]:
        assert self.event is not None
        return {
            "slug": self.agent.slug,
            "run_id": self.run.pk,
            "request_id": self.request.pk,
            "switch_id": self.switch.pk,
            "seq": self.event.seq,
            "step": 1,
            "number": 2,  # the hidden agent's draft (v1 is live): what the editor would change
            "rest": f"v1/runs/{self.run.pk}/nothing-here",
            # People (issue 11) and the Django admin: the hidden team's lead and agent.
            "user_id": self.lead.pk,
            "id": self.lead.pk,
            "object_id": self.agent.pk,
            "object_pk": self.agent.pk,
            "group_id": 1,
            "content_type_id": 1,
            "app_label": "agents",
            # An invitation link (issue 11): a person id and a token that are not valid.
            "uidb64": "MQ",
            "token": "set-password",
            # Teams and API keys (issue 11): the hidden team; a key id of nobody's.
            "team": self.team.slug,
            "key_id": 1,
            # A publish request of the hidden agent (issue 11).
            "publish_id": self.publish.pk,
            # The hidden agent's MCP server (issue 12).
            "server_id": self.mcp_server.pk,
            # The hidden agent's alert rule (issue 14).
            "rule_id": self.rule.pk,
        }

    def post_data(self) -> dict[str, Any]:
        """POST_DATA with the hidden agent's rollout as a form drawn now would carry it, so
        a rollout form that let the wrong person through would change it."""
        return {**POST_DATA, "seen": self.rollout}

    def filters(self) -> dict[str, Any]:
        return {
            "agent": self.agent.slug,
            "team": self.team.slug,
            "run": self.run.pk,
            "after": 0,
            "q": "Xylomarker",
            # The KPI pages (issue 14): the longest window, which covers the hidden runs.
            "window": "30d",
            # The weekly review (issue 14): this week, which holds the hidden team's items.
            "week": review.current_week().name,
        }

    def leaks(self, text: str, typed: dict[str, Any] | None = None) -> list[str]:
        """The markers in the text, but for what the person typed in the request (a page
        may say back the filter it was given)."""
        echoed = {str(v) for v in (typed or {}).values()}
        return [m for m in self.markers if m in text and m not in echoed]

    def unchanged(self) -> None:
        self.request.refresh_from_db()
        assert self.request.status == "pending"
        self.switch.refresh_from_db()
        assert self.switch.released_at is None
        assert KillSwitch.objects.filter(team=self.team).count() == 0
        assert KillSwitch.objects.filter(agent=self.agent).count() == 1
        assert Agent.objects.get(pk=self.agent.pk).state == self.agent.state
        people = type(self.lead).objects
        assert not people.filter(username="matrix-x9").exists()
        lead = people.get(pk=self.lead.pk)
        assert lead.is_active
        assert roles.held_roles(lead, self.team) == [roles.SUPERVISOR]
        assert not lead.groups.filter(name=roles.COMPLIANCE).exists()
        # Teams, agents and keys (issue 11): the hidden ones as they were, none added.
        agent = Agent.objects.get(pk=self.agent.pk)
        seen = ("slug", "name", "description", "team_id", "kind", "owner_id", "archived_at")
        assert [getattr(agent, f) for f in seen] == [getattr(self.agent, f) for f in seen]
        assert agent.archived_at is None
        team = Team.objects.get(pk=self.team.pk)
        assert (team.slug, team.name, team.archived_at) == (
            "hidden-team-x9",
            "Hidden Team Xylo9",
            None,
        )
        assert list(Agent.objects.filter(team=self.team)) == [agent]
        assert not ApiKey.objects.filter(agent=self.agent).exists()
        assert seen_token(agent) == self.rollout
        assert list(AgentVersion.objects.filter(agent=agent).values().order_by("pk")) == (
            self.versions
        )
        assert list(McpServer.objects.values_list("pk", flat=True)) == [self.mcp_server.pk]
        # Alert rules (issue 14): the hidden one as it was, none added.
        assert list(
            AlertRule.objects.values_list("pk", "threshold", "enabled", "state", "engage_breaker")
        ) == [(self.rule.pk, 3.0, True, "firing", False)]
        requests = PublishRequest.objects.filter(agent=agent)
        assert list(requests.values_list("pk", "status")) == [(self.publish.pk, "pending")]


def url_patterns() -> list[tuple[str, str]]:
    """(name, path template) of every URL pattern, walking includes."""
    found: list[tuple[str, str]] = []

    def walk(patterns: list[Any], prefix: str) -> None:
        for p in patterns:
            if isinstance(p, URLResolver):
                walk(p.url_patterns, prefix + str(p.pattern))
            elif isinstance(p, URLPattern):
                found.append((p.name or str(p.pattern), prefix + str(p.pattern)))

    walk(get_resolver().url_patterns, "")
    return sorted(found, key=lambda item: item[0] in LAST)


PARAM = re.compile(r"<(?:\w+:)?(\w+)>")


def concrete(template: str, args: dict[str, Any]) -> str:
    # A regular-expression pattern (the API's JSON catch-all) names its groups as (?P<x>…).
    # (The admin's app index is one, after a plain prefix: its ^ and $ are mid-template.)
    template = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"<\1>", template).replace("^", "").replace("$", "")

    def fill(m: re.Match[str]) -> str:
        assert m[1] in args, f"the matrix has no id for <{m[1]}> in {template}: add one"
        return str(args[m[1]])

    return "/" + PARAM.sub(fill, template)


def body(response: Any) -> str:
    if getattr(response, "streaming", False):
        return b"".join(response.streaming_content).decode(errors="replace")
    return response.content.decode(errors="replace")


# The way in (and an invitation's way to a first password: its ids are a token, not
# a team's thing), the way out, the API (keys, not sessions), the icon (public, as
# every static file is), and the probes for orchestrators. /metrics is not public: it
# answers a scraper on an allowed address, which the test client's 127.0.0.1 is; its
# figures name no team or agent, so the sweep still finds nothing of the hidden team.
PUBLIC = (
    "/login/",
    "/welcome/",
    "/logout/",
    "/api/",
    "/favicon.ico",
    "/healthz",
    "/readyz",
    "/metrics",
)


def refused_signed_out(url: str, response: Any) -> bool:
    if url.startswith(PUBLIC):
        return True
    if response.status_code == 302:
        return bool(response["Location"].startswith("/login/"))
    return response.status_code in (403, 405)


def sweep(cast: Cast, hidden: Hidden, role: str) -> list[str]:
    """Every URL with GET and POST as this person; the problems found."""
    client = Client() if role == ANONYMOUS else cast.clients[role]
    problems: list[str] = []
    if role == "compliance":
        # The control: the markers are found where they are meant to be seen.
        assert hidden.leaks(body(client.get(f"/runs/{hidden.run.pk}/")))
        assert hidden.leaks(body(export(client)))
        assert hidden.leaks(body(client.get("/live/events?after=0")))
    if role != "compliance" and role not in SIGNED_OUT:
        # The catch-up endpoint from the start of the trail.
        text = body(client.get("/live/events?after=0"))
        if hidden.leaks(text):
            problems.append(f"{role} catch-up shows {hidden.leaks(text)}")
    for name, template in url_patterns():
        url = concrete(template, hidden.args())
        for method, data, extra in (
            ("get", None, {}),
            # The same through htmx (pages answer with a partial) and with every filter
            # aimed at the hidden team.
            ("get", hidden.filters(), {"HTTP_HX_REQUEST": "true"}),
            ("post", hidden.post_data(), {}),
        ):
            response = getattr(client, method)(url, data, **extra)
            where = f"{role} {method.upper()} {url} {data or ''} ({name}) -> {response.status_code}"
            text = body(response)
            if response.status_code >= 500:
                problems.append(where)
            if role in SIGNED_OUT and not refused_signed_out(url, response):
                problems.append(where + " (not sent to log in)")
            # Whatever names the hidden team's things is refused (404: it does not exist
            # for them; 403; 405), never shown or acted on.
            named = PARAM.search(template) is not None and not url.startswith("/welcome/")
            answered = response.status_code == 200 or (
                response.status_code == 302 and role not in SIGNED_OUT
            )
            if role != "compliance" and named and answered:
                problems.append(f"{where} (answered for a hidden id)")
            leaked = hidden.leaks(text, data)
            if role != "compliance" and response.status_code == 200 and leaked:
                problems.append(f"{where} shows {leaked}")
    return problems


def test_the_matrix_walks_the_kpi_pages() -> None:
    # The fleet's KPIs by team and an agent's (issue 14): the sweep below asks both for the
    # hidden team's, whose name, agent and slug must appear to nobody but compliance.
    walked = dict(url_patterns())
    assert walked["kpis"] == "kpis/"
    assert walked["agent-kpis"] == "agents/<slug:slug>/kpis/"
    # The alerts pages (issue 14): the hidden rule's page, edit, disable and enable.
    assert walked["alerts"] == "alerts/"
    assert walked["alert-edit"] == "alerts/<int:rule_id>/edit"
    assert walked["alert-disable"] == "alerts/<int:rule_id>/disable"


def test_the_matrix_walks_the_approver_and_review_pages() -> None:
    # A team's approver analytics and weekly review with its download (issue 14): the
    # sweep asks for the hidden team's; everyone but compliance gets 404 (the team does
    # not exist for them) or 405 (a POST).
    walked = dict(url_patterns())
    assert walked["team-approvers"] == "teams/<slug:team>/approvers/"
    assert walked["team-review"] == "teams/<slug:team>/review/"
    assert walked["team-review-download"] == "teams/<slug:team>/review/download"


async def test_no_person_reaches_a_team_they_do_not_work_in(world: Any, make_agent: Any) -> None:
    cast = await sync_to_async(Cast)(world, make_agent)
    sockets = {}
    for role in Cast.ROLES:
        socket, connected, _ = await open_socket(cast.clients[role])
        if connected:
            await socket.receive_from(timeout=10)
            sockets[role] = socket
    hidden = await sync_to_async(Hidden)(world, make_agent)

    def global_switch() -> int:
        killswitch_engage(scope="global", mode="pause", reason="matrix-done", user=None)
        return AuditEvent.objects.order_by("-seq").values_list("seq", flat=True).first() or 0

    end = await sync_to_async(global_switch)()
    problems: list[str] = []
    for role, socket in sockets.items():
        _, frames = await live_seqs(socket, end)
        if role != "compliance" and hidden.leaks(frames):
            problems.append(f"{role} live socket shows {hidden.leaks(frames)}")
        await socket.disconnect()
    assert "deactivated" not in sockets
    for role in OUTSIDERS + ["compliance"]:
        problems += await sync_to_async(sweep)(cast, hidden, role)
    await sync_to_async(hidden.unchanged)()
    assert not problems, "\n".join(problems)
