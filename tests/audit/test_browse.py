"""The audit trail's browse screens over HTTP: who reads what, every filter, keyset pages,
bad input, one event, and the decision chain of a run."""

from __future__ import annotations

import html
import re
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.db import transaction
from django.test import Client
from django.utils import timezone

from agents import roles
from agents.demo.seed import CLAIMS_POLICY
from agents.runtime import execute_run
from agents.services import run_start
from approvals.models import ApprovalRequest
from approvals.services import approval_decide
from audit.chain import format_time
from audit.filters import (
    BAD_CURSOR,
    BAD_RUN,
    BAD_TIME,
    NO_SUCH_AGENT,
    NO_SUCH_TEAM,
    SEARCH_TOO_LONG,
    UNKNOWN_VERB,
    UNTIL_BEFORE_SINCE,
)
from audit.models import AuditEvent
from audit.selectors import PAGE_SIZE
from audit.services import SYSTEM, Actor, audit_append, event_content
from audit.verbs import Verb
from tests.conftest import ALLOW_ALL_TESTS, chained

pytestmark = pytest.mark.django_db

ROW = re.compile(r'<tr id="event-(\d+)"')
OLDER = re.compile(r'<a href="([^"]+)"[^>]*rel="next"')


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def seqs(response: Any) -> list[int]:
    return [int(s) for s in ROW.findall(response.content.decode())]


def record(
    agent: Any,
    verb: str = Verb.RUN_QUEUED,
    *,
    actor: Actor = SYSTEM,
    payload: dict[str, Any] | None = None,
    run_id: int | None = None,
    at: datetime | None = None,
) -> int:
    with transaction.atomic():
        return chained(
            audit_append(
                event_content(
                    verb=verb,
                    actor=actor,
                    subject_type="run" if run_id else "agent",
                    subject_id=run_id or agent.pk,
                    agent_id=agent.pk,
                    team_id=agent.team_id,
                    run_id=run_id,
                    payload=payload or {},
                    occurred_at=at,
                )
            )
        )


def everything() -> list[AuditEvent]:
    return list(AuditEvent.objects.order_by("-seq"))


@pytest.fixture
def agents(world: Any, make_agent: Any) -> Any:
    """A claims agent and a support agent, with a few events each."""

    class Agents:
        claims = make_agent("claims-bot", "tests.support.agents.counter", ALLOW_ALL_TESTS)
        support = make_agent(
            "helpdesk", "tests.support.agents.counter", ALLOW_ALL_TESTS, team=world.support
        )

    a = Agents()
    record(a.claims, Verb.ACTION_DENIED, payload={"tool": "test.pay", "reason": "Too Much"})
    record(a.claims, Verb.ACTION_HELD, actor=Actor.agent(a.claims), run_id=7)
    record(a.support, Verb.ACTION_DENIED, payload={"tool": "test.count"}, run_id=8)
    record(a.support, Verb.APPROVAL_REJECTED, actor=Actor.user(world.support_supervisor))
    return a


# --- who reads what ---------------------------------------------------------------------


def test_compliance_reads_every_teams_events(world: Any, agents: Any) -> None:
    shown = seqs(client_for(world.compliance).get("/audit/"))
    assert shown == [e.seq for e in everything()]  # every event, newest first
    assert {agents.claims.team_id, agents.support.team_id} <= {
        e.team_id for e in AuditEvent.objects.filter(seq__in=shown)
    }


def test_a_supervisor_reads_only_their_teams_events(world: Any, agents: Any) -> None:
    for person, team in [
        (world.supervisor, world.claims),
        (world.support_supervisor, world.support),
    ]:
        shown = seqs(client_for(person).get("/audit/"))
        assert shown and shown == [e.seq for e in everything() if e.team_id == team.pk]


def test_a_grant_on_one_agent_shows_that_agent_and_its_team_as_a_whole_only(
    world: Any, agents: Any, make_agent: Any
) -> None:
    other = make_agent("claims-other", "tests.support.agents.counter", ALLOW_ALL_TESTS)
    record(other, Verb.ACTION_DENIED)
    roles.role_grant(user=world.outsider, role=roles.SUPERVISOR, target=agents.claims)
    shown = seqs(client_for(world.outsider).get("/audit/"))
    # Its own events, and those about its team as a whole (grants, the team's switch):
    # never another agent's of the same team.
    assert shown == [
        e.seq
        for e in everything()
        if e.agent_id == agents.claims.pk or (e.agent_id is None and e.team_id == world.claims.pk)
    ]
    assert not {e.seq for e in everything() if e.agent_id == other.pk} & set(shown)


def test_the_outsider_reads_only_the_global_switches(world: Any, agents: Any) -> None:
    from agents.services import killswitch_engage

    switch = killswitch_engage(scope="global", mode="pause", reason="drill", user=world.supervisor)
    killswitch_engage(
        scope="team", mode="pause", reason="t", team=world.support, user=world.support_supervisor
    )
    client = client_for(world.outsider)
    # Every signed-in person is shown the global switch (its banner is on every page), so
    # the trail shows them its events, and nothing else.
    shown = seqs(client.get("/audit/"))
    assert shown == [
        e.seq
        for e in everything()
        if e.subject_type == "killswitch" and e.subject_id == str(switch.pk)
    ]
    assert shown
    assert client.get(f"/audit/events/{everything()[0].seq}/").status_code == 404
    assert client.get("/audit/runs/7/").status_code == 404


def test_signed_out_people_are_sent_to_log_in(world: Any) -> None:
    response = Client().get("/audit/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")


def test_the_trail_cannot_be_changed_from_its_pages(world: Any, agents: Any) -> None:
    client = client_for(world.compliance)
    seq = everything()[0].seq
    for url in ["/audit/", f"/audit/events/{seq}/", "/audit/runs/7/"]:
        assert client.post(url).status_code == 405


# --- filters ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "expect"),
    [
        ({"agent": "helpdesk"}, lambda e, a: e.agent_id == a.support.pk),
        ({"team": "claims"}, lambda e, a: e.team_id == a.claims.team_id),
        ({"verb": Verb.ACTION_DENIED}, lambda e, a: e.verb == Verb.ACTION_DENIED),
        ({"decision": "rejected"}, lambda e, a: e.verb == Verb.APPROVAL_REJECTED),
        ({"decision": "held"}, lambda e, a: e.verb == Verb.ACTION_HELD),
        ({"run": "8"}, lambda e, a: e.run_id == 8),
        ({"actor": "claims-bot"}, lambda e, a: e.actor_label == "claims-bot"),
        ({"actor": "sue"}, lambda e, a: e.actor_label == "sue"),
        ({"q": "too much"}, lambda e, a: "too much" in e.body.lower()),
        (
            {"team": "support", "verb": Verb.ACTION_DENIED},
            lambda e, a: e.team_id == a.support.team_id and e.verb == Verb.ACTION_DENIED,
        ),
        ({"verb": Verb.ACTION_HELD, "decision": "denied"}, lambda e, a: False),
    ],
)
def test_each_filter_narrows_to_exactly_its_events(
    world: Any, agents: Any, params: dict[str, str], expect: Any
) -> None:
    response = client_for(world.compliance).get("/audit/", params)
    assert response.status_code == 200
    expected = [e.seq for e in everything() if expect(e, agents)]
    assert seqs(response) == expected
    if expected:
        assert len(expected) < AuditEvent.objects.count()  # the filter did narrow


def test_filters_stay_within_what_the_person_may_see(world: Any, agents: Any) -> None:
    shown = seqs(client_for(world.supervisor).get("/audit/", {"verb": Verb.ACTION_DENIED}))
    assert shown == [
        e.seq
        for e in everything()
        if e.verb == Verb.ACTION_DENIED and e.team_id == agents.claims.team_id
    ]


def test_a_time_range_is_read_in_utc_and_until_covers_its_day(world: Any, agents: Any) -> None:
    # Dated after everything already in the trail, so time order is seq order.
    day = (timezone.now() + timedelta(days=2)).replace(hour=0, minute=0, second=0, microsecond=0)
    first = record(agents.claims, at=day + timedelta(hours=23, minutes=59))
    second = record(agents.claims, at=day + timedelta(days=1, hours=10))
    third = record(agents.claims, at=day + timedelta(days=1, hours=10, minutes=30))
    fourth = record(agents.claims, at=day + timedelta(days=2))
    client = client_for(world.compliance)
    next_day = (day + timedelta(days=1)).strftime("%Y-%m-%d")
    assert seqs(client.get("/audit/", {"since": next_day, "until": next_day})) == [third, second]
    minute = f"{next_day}T10:00"
    assert seqs(client.get("/audit/", {"since": minute, "until": minute})) == [second]
    assert seqs(client.get("/audit/", {"since": f"{next_day}T10:01"})) == [fourth, third]
    until_first = seqs(client.get("/audit/", {"until": day.strftime("%Y-%m-%dT%H:%M")}))
    assert first not in until_first and until_first == [e.seq for e in everything()][4:]


def test_a_time_range_is_exact_when_seq_and_time_disagree_a_little(world: Any, agents: Any) -> None:
    # Two writers: the later seq read its time two minutes earlier (it waited for the lock).
    t = (timezone.now() + timedelta(days=1)).replace(hour=10, minute=0, second=0, microsecond=0)
    on_time = record(agents.claims, at=t)
    waited = record(agents.claims, at=t - timedelta(minutes=2))
    later = record(agents.claims, at=t + timedelta(minutes=5))
    client = client_for(world.compliance)
    minute = (t - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M")
    assert seqs(client.get("/audit/", {"since": minute})) == [later, on_time]
    before = seqs(client.get("/audit/", {"until": minute}))
    assert waited in before and on_time not in before and later not in before


def test_time_bounds_are_compared_as_utc_text(world: Any, agents: Any) -> None:
    at = timezone.now() + timedelta(days=3)
    seq = record(agents.claims, at=at)
    assert AuditEvent.objects.get(seq=seq).occurred_at == format_time(at)


# --- keyset pages -----------------------------------------------------------------------


def walk(client: Client, url: str) -> list[list[int]]:
    pages = []
    while url:
        response = client.get(url)
        assert response.status_code == 200
        pages.append(seqs(response))
        found = OLDER.search(response.content.decode())
        url = html.unescape(found.group(1)) if found else ""
        assert len(pages) < 20, "the pages never end"
    return pages


def test_keyset_pages_walk_every_event_once(world: Any, agents: Any) -> None:
    for i in range(2 * PAGE_SIZE + 7):
        record(agents.claims if i % 3 else agents.support, payload={"i": i})
    pages = walk(client_for(world.compliance), "/audit/")
    assert [len(p) for p in pages[:-1]] == [PAGE_SIZE] * (len(pages) - 1)
    walked = [s for p in pages for s in p]
    assert walked == [e.seq for e in everything()]


def test_the_older_link_keeps_the_filters(world: Any, agents: Any) -> None:
    for i in range(2 * PAGE_SIZE + 5):
        record(agents.claims, Verb.ACTION_DENIED if i % 2 else Verb.RUN_QUEUED, run_id=9)
    client = client_for(world.compliance)
    first = client.get("/audit/", {"verb": Verb.ACTION_DENIED, "team": "claims"}).content.decode()
    link = OLDER.search(first)
    assert link, first
    older = html.unescape(link.group(1))
    assert "verb=action.denied" in older and "team=claims" in older and "before=" in older
    pages = walk(client, f"/audit/?verb={Verb.ACTION_DENIED}&run=9")
    walked = [s for p in pages for s in p]
    assert walked == [e.seq for e in everything() if e.verb == Verb.ACTION_DENIED and e.run_id == 9]
    second = client.get(older).content.decode()
    newest = re.search(r'<a href="([^"]+)"[^>]*data-testid="newest"', second)
    assert newest, second
    assert "before=" not in newest.group(1)


def test_a_supervisor_of_two_teams_walks_both_without_duplicates(world: Any, agents: Any) -> None:
    roles.role_grant(user=world.outsider, role=roles.SUPERVISOR, target=world.claims)
    roles.role_grant(user=world.outsider, role=roles.SUPERVISOR, target=world.support)
    for i in range(PAGE_SIZE + 20):
        record(agents.claims if i % 4 else agents.support, payload={"i": i})
    pages = walk(client_for(world.outsider), "/audit/")
    walked = [s for p in pages for s in p]
    teams = {world.claims.pk, world.support.pk}
    assert walked == [e.seq for e in everything() if e.team_id in teams]
    assert len(pages) == 2


def test_an_htmx_request_gets_only_the_rows(world: Any, agents: Any) -> None:
    response = client_for(world.compliance).get(
        "/audit/", {"verb": Verb.ACTION_DENIED}, headers={"HX-Request": "true"}
    )
    body = response.content.decode()
    assert response.status_code == 200 and body.lstrip().startswith('<div id="rows">')
    assert "<html" not in body and len(seqs(response)) == 2


# --- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"since": "notadate"}, BAD_TIME),
        ({"until": "2026-13-01"}, BAD_TIME),
        ({"since": "0001-01-01"}, BAD_TIME),
        ({"until": "9999-12-31"}, BAD_TIME),
        ({"since": "2026-11-22", "until": "2026-11-21T23:59"}, UNTIL_BEFORE_SINCE),
        ({"agent": "nope"}, NO_SUCH_AGENT.format(slug="nope")),
        ({"agent": "helpdesk"}, NO_SUCH_AGENT.format(slug="helpdesk")),  # another team's
        ({"team": "support"}, NO_SUCH_TEAM.format(slug="support")),
        ({"run": "abc"}, BAD_RUN),
        ({"run": "0"}, BAD_RUN),
        ({"run": "99999999999999999999"}, BAD_RUN),
        ({"before": "-1"}, BAD_CURSOR),
        ({"before": "abc"}, BAD_CURSOR),
        ({"q": "x" * 201}, SEARCH_TOO_LONG),
        ({"verb": "action.exploded"}, UNKNOWN_VERB),
    ],
)
def test_bad_input_is_a_400_with_its_message_and_no_rows(
    world: Any, agents: Any, params: dict[str, str], message: str
) -> None:
    client = client_for(world.supervisor)
    for headers in [{}, {"HX-Request": "true"}]:
        response = client.get("/audit/", params, headers=headers)
        assert response.status_code == 400
        assert html.escape(message) in response.content.decode()
        assert seqs(response) == []


# --- one event --------------------------------------------------------------------------


def test_an_event_shows_every_column_its_payload_and_its_hashes(world: Any, agents: Any) -> None:
    seq = record(agents.claims, Verb.ACTION_DENIED, payload={"tool": "test.pay", "note": "ünïcode"})
    event = AuditEvent.objects.get(seq=seq)
    page = client_for(world.supervisor).get(f"/audit/events/{seq}/").content.decode()
    for expected in [
        event.occurred_at,
        "action.denied",
        "claims-bot",
        event.prev_hash,
        event.hash,
        "&quot;tool&quot;: &quot;test.pay&quot;",  # pretty printed, one key a line
        "ünïcode",
    ]:
        assert expected in page, expected


def test_an_event_of_another_team_or_none_at_all_is_404(world: Any, agents: Any) -> None:
    theirs = AuditEvent.objects.filter(team_id=world.support.pk).first()
    assert theirs is not None
    client = client_for(world.supervisor)
    assert client.get(f"/audit/events/{theirs.seq}/").status_code == 404
    assert client.get("/audit/events/999999999/").status_code == 404
    assert client.get("/audit/events/99999999999999999999999/").status_code == 404
    assert client.get("/audit/runs/99999999999999999999999/").status_code == 404
    assert client_for(world.compliance).get(f"/audit/events/{theirs.seq}/").status_code == 200


# --- the decision chain -----------------------------------------------------------------

REASON = "the receipt does not match the claimed amount"


@pytest.fixture
def rejected_run(world: Any, make_agent: Any) -> Any:
    """A claim payout held for a supervisor, rejected by sam, then finished by the agent."""
    agent = make_agent("claims-payer", "agents.demo.programs.claim_payout", CLAIMS_POLICY)
    run = run_start(
        agent=agent,
        input={
            "claim_id": "CLM-9",
            "policyholder": "Ina Vogel",
            "description": "water damage",
            "amount": 4200,
        },
    )
    execute_run(run.pk)
    request = ApprovalRequest.objects.get(run=run)
    approval_decide(
        request_id=request.pk,
        user=world.supervisor,
        verdict="reject",
        seen_args_hash=request.args_hash,
        comment=REASON,
    )
    execute_run(run.pk)
    run.refresh_from_db()
    assert run.status == "succeeded"
    return run


def in_order(page: str, *parts: str) -> None:
    at = [page.find(p) for p in parts]
    assert -1 not in at, [p for p, i in zip(parts, at, strict=True) if i == -1]
    assert at == sorted(at), parts


def test_the_decision_chain_tells_what_happened_and_who_said_no(
    world: Any, rejected_run: Any
) -> None:
    page = client_for(world.compliance).get(f"/audit/runs/{rejected_run.pk}/")
    assert page.status_code == 200
    in_order(
        page.content.decode(),
        "CLM-9",  # the input
        "assess claim",  # the model call
        "Damage is covered",  # its rationale
        "payments.pay",
        "payouts above 1,000 EUR need a supervisor",  # the rule that matched
        ">sam</strong> rejected",  # who decided
        REASON,  # and why
        "claims.flag",  # what the agent did next
        "run.succeeded",  # the result
    )
    # The model's answer and the run's output are in the trail itself, not borrowed.
    assert "The model's answer:" in page.content.decode()
    assert "The run's output:" in page.content.decode()
    assert "not covered by the audit hash chain" not in page.content.decode()


def test_an_action_chain_shows_the_input_and_that_action_only(
    world: Any, rejected_run: Any
) -> None:
    held = AuditEvent.objects.get(run_id=rejected_run.pk, verb=Verb.ACTION_HELD)
    step = held.subject_id.split("/")[1]
    client = client_for(world.supervisor)
    run_page = client.get(f"/audit/runs/{rejected_run.pk}/").content.decode()
    assert f'href="/audit/runs/{rejected_run.pk}/actions/{step}/"' in run_page
    page = client.get(f"/audit/runs/{rejected_run.pk}/actions/{step}/").content.decode()
    in_order(page, "CLM-9", "payments.pay", "need a supervisor", ">sam</strong> rejected", REASON)
    # The chain names the policy version the decision was taken under, and its rule.
    number = rejected_run.version.number
    assert f'data-testid="policy-version">policy version v{number}<' in page
    assert f"of v{number}:" in page
    assert "claims.flag" not in page and "Damage is covered" not in page
    assert client.get(f"/audit/runs/{rejected_run.pk}/actions/99/").status_code == 404


def test_a_decision_event_links_to_its_actions_chain(world: Any, rejected_run: Any) -> None:
    rejected = AuditEvent.objects.get(run_id=rejected_run.pk, verb=Verb.APPROVAL_REJECTED)
    held = AuditEvent.objects.get(run_id=rejected_run.pk, verb=Verb.ACTION_HELD)
    step = held.subject_id.split("/")[1]
    page = client_for(world.compliance).get(f"/audit/events/{rejected.seq}/").content.decode()
    assert f'href="/audit/runs/{rejected_run.pk}/actions/{step}/"' in page


def test_another_teams_supervisor_sees_no_chain(world: Any, rejected_run: Any) -> None:
    client = client_for(world.support_supervisor)
    assert client.get(f"/audit/runs/{rejected_run.pk}/").status_code == 404
    assert client.get(f"/audit/runs/{rejected_run.pk}/actions/1/").status_code == 404


def test_a_team_switch_and_a_team_grant_are_seen_by_that_teams_supervisors(world: Any) -> None:
    from agents.services import killswitch_engage

    killswitch_engage(
        scope="team", mode="pause", reason="bad deploy", user=world.supervisor, team=world.claims
    )

    def rows(person: Any, verb: str) -> str:
        response = client_for(person).get("/audit/", {"verb": verb}, HTTP_HX_REQUEST="true")
        return str(response.content.decode())

    assert "bad deploy" in rows(world.supervisor, Verb.KILLSWITCH_ENGAGED)
    assert "bad deploy" not in rows(world.support_supervisor, Verb.KILLSWITCH_ENGAGED)
    assert "sol" in rows(world.supervisor, Verb.GRANT_ADDED)  # granted on team claims
    assert "sam" not in rows(world.support_supervisor, Verb.GRANT_ADDED)


def test_quoted_text_is_found_as_it_was_written(world: Any, agents: Any) -> None:
    seq = record(agents.claims, payload={"note": 'paid to ACME "Ltd" \\ branch'})
    client = client_for(world.compliance)
    assert seqs(client.get("/audit/", {"q": 'ACME "Ltd" \\ branch'})) == [seq]


def test_a_text_search_looks_a_window_at_a_time_and_offers_to_go_on(
    world: Any, agents: Any, monkeypatch: Any
) -> None:
    from audit import selectors

    needle = record(agents.claims, payload={"note": "needle"})
    for _ in range(12):
        record(agents.claims, payload={"note": "hay"})
    monkeypatch.setattr(selectors, "SEARCH_WINDOW", 5)
    monkeypatch.setattr(selectors, "SEARCH_BUDGET", 0.0)  # one stretch a request
    client = client_for(world.compliance)
    url, found, pages = "/audit/?q=needle", [], 0
    while url and pages < 10:
        page = client.get(url)
        found += seqs(page)
        older = re.search(r'href="(/audit/\?[^"]*before=\d+[^"]*)" hx-get', page.content.decode())
        if found:
            break
        assert 'data-testid="searched-from"' in page.content.decode()
        url, pages = html.unescape(older.group(1)) if older else "", pages + 1
    assert found == [needle]
    assert pages >= 2  # it took more than one window to get there


def test_a_text_search_reads_on_through_stretches_while_its_time_lasts(
    world: Any, agents: Any, monkeypatch: Any
) -> None:
    from audit import selectors

    needle = record(agents.claims, payload={"note": "needle"})
    for _ in range(12):
        record(agents.claims, payload={"note": "hay"})
    monkeypatch.setattr(selectors, "SEARCH_WINDOW", 3)
    # Time enough for every stretch, however loaded the machine: the test is about reading
    # on, not about how many stretches fit in the real budget.
    monkeypatch.setattr(selectors, "SEARCH_BUDGET", 3600.0)
    page = client_for(world.compliance).get("/audit/", {"q": "needle"})
    assert seqs(page) == [needle]
    assert 'data-testid="searched-from"' not in page.content.decode()
