"""A proposed policy tried on recorded history (the dry-run), and two versions side by side."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from agents.dryrun import BAD_LAST_N, policy_dry_run
from agents.models import Action, AgentVersion
from agents.policy import PolicyError, parse_policy
from agents.runtime import execute_run
from agents.services import run_start, version_create
from agents.versions import ADDED, CHANGED, REMOVED, SAME, version_diff
from approvals.models import ApprovalRequest
from approvals.services import approval_decide
from audit.models import AuditEvent
from tests.conftest import ALLOW_ALL_TESTS

pytestmark = pytest.mark.django_db

ROGUE = "tests.support.agents.rogue"
LIVE: dict[str, list[dict[str, Any]]] = {
    "rules": [
        {"tool": "test.pay", "when": "amount <= 500", "effect": "allow"},
        {"tool": "test.pay", "effect": "approve", "approvals": 1},
        {"tool": "test.count", "effect": "allow"},
        {"tool": "test.count_once", "effect": "shadow"},
    ]
}
# Payouts above 200 held, above 1000 refused; test.held shadowed, test.count_once denied
# (no rule names it any more).
DRAFT: dict[str, list[dict[str, Any]]] = {
    "rules": [
        {"tool": "test.pay", "when": "amount <= 200", "effect": "allow"},
        {"tool": "test.pay", "when": "amount <= 1000", "effect": "approve"},
        {"tool": "test.pay", "effect": "deny"},
        {"tool": "test.count", "effect": "allow"},
        {"tool": "test.held", "effect": "shadow"},
    ]
}
# Each run's calls; a call held for approval parks its run, so it comes last.
HISTORY: list[list[tuple[str, dict[str, Any]]]] = [
    [
        ("test.count", {"label": "a"}),
        ("test.pay", {"claim_id": "c1", "amount": 100}),
        ("test.count_once", {"label": "b"}),
        ("test.held", {"label": "c"}),
    ],
    [("test.pay", {"claim_id": "c2", "amount": 900})],
    [
        ("test.pay", {"claim_id": "c3", "amount": 300}),
        ("test.pay", {"claim_id": "c4", "amount": "lots"}),  # breaks the schema: invalid
    ],
    [("test.pay", {"claim_id": "c5", "amount": 2000})],
]
# Worked out by hand from LIVE and DRAFT.
EXPECTED = Counter(
    {
        ("allowed", "allowed"): 2,  # test.count; the payout of 100
        ("shadowed", "denied"): 1,  # test.count_once
        ("denied", "shadowed"): 1,  # test.held
        ("held", "held"): 1,  # 900
        ("allowed", "held"): 1,  # 300
        ("held", "denied"): 1,  # 2000
    }
)


@pytest.fixture
def history(make_agent: Any) -> Any:
    agent = make_agent("payer", ROGUE, LIVE)
    for calls in HISTORY:
        run = run_start(agent=agent, input={"calls": [list(call) for call in calls]})
        execute_run(run.pk)
    return agent


def independent_replay(agent: Any, policy: Any) -> Counter[tuple[str, str]]:
    """What the dry-run should find, worked out here: every journaled tool step the
    gateway decided by policy, decided again by the proposed policy."""
    word = {"allow": "allowed", "approve": "held", "deny": "denied", "shadow": "shadowed"}
    proposed = parse_policy(policy)
    counts: Counter[tuple[str, str]] = Counter()
    steps = Action.objects.filter(run__agent=agent, kind="tool").exclude(status="invalid")
    for step in steps:
        after = proposed.decide(step.name, step.requested_args).effect
        counts[(word[step.decision], word[after])] += 1
    return counts


def test_dry_run_counts_equal_an_independent_replay(history: Any, world: Any) -> None:
    result = policy_dry_run(user=world.admin, agent=history, policy=DRAFT, last_n=100)
    assert result.counts() == independent_replay(history, DRAFT) == EXPECTED
    assert result.considered == 7 and result.not_by_policy == 1
    assert (result.changed, result.unchanged) == (4, 3)
    # Changed transitions come first.
    assert all(t.changed for t in result.transitions[:4])


def test_dry_run_examples_name_the_action_its_run_and_both_rules(history: Any, world: Any) -> None:
    result = policy_dry_run(user=world.admin, agent=history, policy=DRAFT, last_n=100)
    (held_to_denied,) = [t for t in result.transitions if (t.before, t.after) == ("held", "denied")]
    (example,) = held_to_denied.examples
    action = Action.objects.get(pk=example.action_id)
    assert action.requested_args == {"claim_id": "c5", "amount": 2000}
    assert (example.run_id, example.seq) == (action.run_id, action.seq)
    assert (example.recorded_rule, example.proposed_rule) == (2, 3)


def test_dry_run_decides_the_arguments_as_requested_not_as_edited(history: Any, world: Any) -> None:
    # An approver cut the held payout of 900 to 150: the draft would have allowed 150,
    # but the agent asked for 900, and that is what the draft would have had to decide.
    request = ApprovalRequest.objects.get(action__requested_args__amount=900)
    approval_decide(
        request_id=request.pk,
        user=world.supervisor,
        verdict="approve",
        seen_args_hash=request.args_hash,
        edited_args={"claim_id": "c2", "amount": 150},
    )
    assert Action.objects.get(pk=request.action_id).args["amount"] == 150
    result = policy_dry_run(user=world.admin, agent=history, policy=DRAFT, last_n=100)
    assert result.counts() == EXPECTED


def test_dry_run_of_the_live_version_changes_nothing(history: Any, world: Any) -> None:
    result = policy_dry_run(user=world.admin, agent=history, policy=history.live_version)
    assert result.changed == 0 and result.unchanged == 7


def test_dry_run_takes_only_the_last_n_steps(history: Any, world: Any) -> None:
    result = policy_dry_run(user=world.admin, agent=history, policy=DRAFT, last_n=1)
    assert result.counts() == Counter({("held", "denied"): 1})  # the payout of 2000, last


def test_dry_run_costs_the_same_queries_whatever_the_history(
    history: Any, world: Any, make_agent: Any
) -> None:
    policy_dry_run(user=world.admin, agent=history, policy=DRAFT, last_n=1)  # grants loaded
    with CaptureQueriesContext(connection) as few:
        policy_dry_run(user=world.admin, agent=history, policy=DRAFT, last_n=1)
    with CaptureQueriesContext(connection) as many:
        policy_dry_run(user=world.admin, agent=history, policy=DRAFT, last_n=100)
    assert len(few) == len(many) == 1, [q["sql"] for q in many.captured_queries]


@pytest.mark.parametrize(
    ("draft", "message"),
    [
        ({"rules": [{"tool": "test.pay", "when": "amount >", "effect": "allow"}]}, "condition"),
        ({"rules": [{"tool": "test.pay", "effect": "perhaps"}]}, "'effect' is one of"),
        ({"rate_limits": [{"tool": "test.pay", "limit": -1, "per": 60}]}, "'limit'"),
    ],
)
def test_a_bad_draft_is_refused_naming_the_problem_and_nothing_changes(
    history: Any, world: Any, draft: Any, message: str
) -> None:
    events, steps = AuditEvent.objects.count(), Action.objects.count()
    with pytest.raises(PolicyError, match=message):
        policy_dry_run(user=world.admin, agent=history, policy=draft)
    assert (AuditEvent.objects.count(), Action.objects.count()) == (events, steps)
    assert history.versions.count() == 1


def test_another_agents_version_is_refused(history: Any, world: Any, make_agent: Any) -> None:
    other = make_agent("other", ROGUE, ALLOW_ALL_TESTS)
    with pytest.raises(PolicyError, match="belongs to another agent"):
        policy_dry_run(user=world.admin, agent=history, policy=other.live_version)


@pytest.mark.parametrize("last_n", [0, -3, 5001, True, "10"])
def test_a_bad_number_of_steps_is_refused(history: Any, world: Any, last_n: Any) -> None:
    with pytest.raises(ValueError, match=BAD_LAST_N):
        policy_dry_run(user=world.admin, agent=history, policy=DRAFT, last_n=last_n)


@pytest.mark.parametrize("who", ["supervisor", "compliance", "support_supervisor", "outsider"])
def test_only_those_who_administer_the_agent_may_dry_run(
    history: Any, world: Any, who: str
) -> None:
    with pytest.raises(PermissionDenied):
        policy_dry_run(user=getattr(world, who), agent=history, policy=DRAFT)


def test_a_dry_run_writes_nothing(history: Any, world: Any) -> None:
    events, steps = AuditEvent.objects.count(), list(Action.objects.values().order_by("pk"))
    policy_dry_run(user=world.admin, agent=history, policy=DRAFT)
    assert AuditEvent.objects.count() == events
    assert list(Action.objects.values().order_by("pk")) == steps


# --- the diff of two versions ----------------------------------------------------------------


def draft(agent: Any, world: Any, policy: Any, config: Any = None) -> AgentVersion:
    return version_create(
        agent=agent,
        program=ROGUE,
        policy=policy,
        config=config or {"model": "scripted"},  # make_agent's
        user=world.admin,
    )


def test_the_diff_marks_a_changed_condition(make_agent: Any, world: Any) -> None:
    agent = make_agent("payer", ROGUE, LIVE)
    changed = {"rules": [dict(LIVE["rules"][0], when="amount <= 250"), *LIVE["rules"][1:]]}
    diff = version_diff(agent.live_version, draft(agent, world, changed))
    first, *rest = diff.rules
    assert (first.status, first.changed) == (CHANGED, ("condition",))
    assert first.a is not None and first.b is not None
    assert (first.a.fields["condition"], first.b.fields["condition"]) == (
        "amount <= 500",
        "amount <= 250",
    )
    assert [row.status for row in rest] == [SAME, SAME, SAME]
    assert not diff.identical


def test_the_same_condition_written_differently_is_no_change(make_agent: Any, world: Any) -> None:
    agent = make_agent("payer", ROGUE, LIVE)
    respaced = {"rules": [dict(LIVE["rules"][0], when="amount<=500"), *LIVE["rules"][1:]]}
    assert version_diff(agent.live_version, draft(agent, world, respaced)).identical


def test_the_diff_pairs_rules_by_tool_across_an_inserted_rule(make_agent: Any, world: Any) -> None:
    agent = make_agent("payer", ROGUE, LIVE)
    rules = LIVE["rules"]
    b = {
        "rules": [
            {"tool": "test.held", "effect": "deny"},  # new, on top
            rules[0],
            dict(rules[1], approvals=2, approvers="finance", timeout="1h"),
            rules[2],
        ],
        "rate_limits": [{"tool": "test.pay", "limit": 5, "per": 60}],
    }
    diff = version_diff(agent.live_version, draft(agent, world, b, {"model": "other"}))
    assert [row.status for row in diff.rules] == [ADDED, SAME, CHANGED, SAME, REMOVED]
    held = diff.rules[2]
    assert held.changed == ("approvals", "timeout", "approver group")
    assert held.moved and held.a is not None and held.b is not None
    assert (held.a.position, held.b.position) == (2, 3)
    removed = diff.rules[4]
    assert removed.a is not None and removed.a.fields["tool"] == "test.count_once"
    assert [(r.key, r.status, r.b) for r in diff.rate_limits] == [("test.pay", ADDED, "5 per 1m")]
    assert [(r.key, r.status) for r in diff.config] == [("model", CHANGED)]
    assert diff.program is None


def test_a_rule_added_below_others_of_its_tool_is_added_not_a_shift(
    make_agent: Any, world: Any
) -> None:
    agent = make_agent("payer", ROGUE, LIVE)
    diff = version_diff(agent.live_version, draft(agent, world, DRAFT))
    statuses = [
        (row.status, row.a and row.a.position, row.b and row.b.position) for row in diff.rules
    ]
    assert statuses == [
        (CHANGED, 1, 1),  # test.pay: amount <= 500 -> amount <= 200
        (CHANGED, 2, 2),  # test.pay: a condition where there was none
        (ADDED, None, 3),  # test.pay: deny
        (SAME, 3, 4),  # test.count
        (REMOVED, 4, None),  # test.count_once
        (ADDED, None, 5),  # test.held
    ]
    assert [row.changed for row in diff.rules[:2]] == [("condition",), ("condition",)]


def test_a_changed_effect_shows_the_approval_fields_it_drops(make_agent: Any, world: Any) -> None:
    agent = make_agent("payer", ROGUE, LIVE)
    b = {"rules": [LIVE["rules"][0], {"tool": "test.pay", "effect": "deny"}, *LIVE["rules"][2:]]}
    row = version_diff(agent.live_version, draft(agent, world, b)).rules[1]
    assert row.status == CHANGED
    assert row.changed[0] == "effect" and "approvals" in row.changed


# --- the pages -------------------------------------------------------------------------------


def client_of(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_dry_run_page_shows_the_counts_and_links_to_examples(history: Any, world: Any) -> None:
    v2 = draft(history, world, DRAFT)
    response = client_of(world.admin).get(f"/agents/payer/versions/{v2.number}/dry-run/?n=100")
    assert response.status_code == 200
    page = response.content.decode()
    assert "<strong>4</strong> of 7 steps would be decided differently; 3 unchanged." in page
    example = Action.objects.get(requested_args={"claim_id": "c5", "amount": 2000})
    assert f'href="/runs/{example.run_id}/#step-{example.seq}"' in page
    assert 'data-testid="transition-held-denied"' in page


def test_the_dry_run_page_refuses_a_bad_number(history: Any, world: Any) -> None:
    response = client_of(world.admin).get("/agents/payer/versions/1/dry-run/?n=lots")
    assert response.status_code == 400
    assert BAD_LAST_N in response.content.decode()


@pytest.mark.parametrize(("who", "status"), [("supervisor", 403), ("support_supervisor", 404)])
def test_the_dry_run_page_is_for_those_who_administer(
    history: Any, world: Any, who: str, status: int
) -> None:
    response = client_of(getattr(world, who)).get("/agents/payer/versions/1/dry-run/")
    assert response.status_code == status


def test_the_agent_page_links_the_dry_run_for_admins_only(history: Any, world: Any) -> None:
    link = 'href="/agents/payer/versions/1/dry-run/"'
    assert link in client_of(world.admin).get("/agents/payer/").content.decode()
    assert link not in client_of(world.supervisor).get("/agents/payer/").content.decode()


def test_the_diff_page_highlights_a_changed_condition(make_agent: Any, world: Any) -> None:
    agent = make_agent("payer", ROGUE, LIVE)
    changed = {"rules": [dict(LIVE["rules"][0], when="amount <= 250"), *LIVE["rules"][1:]]}
    draft(agent, world, changed)
    # Without a choice, the newest version against the one before it; supervisors see it.
    response = client_of(world.supervisor).get("/agents/payer/versions/diff/")
    assert response.status_code == 200
    page = response.content.decode()
    assert page.count('data-testid="changed-condition"') == 2  # both sides
    assert "<code>amount &lt;= 250</code>" in page
    assert client_of(world.admin).get("/agents/payer/versions/diff/?a=1&b=9").status_code == 404
    assert (
        client_of(world.support_supervisor).get("/agents/payer/versions/diff/").status_code == 404
    )


def test_a_rule_whose_tool_changed_in_place_is_one_changed_rule(
    make_agent: Any, world: Any
) -> None:
    a = {
        "rules": [
            {"tool": "test.pay", "effect": "allow"},
            {"tool": "test.count", "effect": "allow"},
        ]
    }
    agent = make_agent("payer", ROGUE, a)
    b = {
        "rules": [{"tool": "test.*", "effect": "allow"}, {"tool": "test.count", "effect": "allow"}]
    }
    diff = version_diff(agent.live_version, draft(agent, world, b))
    assert [(row.status, row.changed) for row in diff.rules] == [(CHANGED, ("tool",)), (SAME, ())]


def test_an_admin_of_one_team_cannot_dry_run_another_teams_agent(
    make_agent: Any, world: Any
) -> None:
    helpdesk = make_agent("helpdesk", ROGUE, LIVE, team=world.support)
    with pytest.raises(PermissionDenied):
        policy_dry_run(user=world.admin, agent=helpdesk, policy=DRAFT)
    response = client_of(world.admin).get("/agents/helpdesk/versions/1/dry-run/")
    assert response.status_code == 404
