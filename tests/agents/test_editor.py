"""The policy editor: drafts edited field by field, every bad field refused in place with
nothing saved, published versions unchangeable, rules reordered without JavaScript, the
unsaved form dry-run, and nobody but the agent's admins let in."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.test import Client
from django.utils.html import escape

from agents import roles
from agents.drafts import (
    PUBLISHED_IS_FINAL,
    UNKNOWN_GROUP,
    UNKNOWN_TOOL,
    version_draft_new,
    version_draft_save,
)
from agents.editor import (
    CONFIG_OBJECT,
    ESCALATE_NEEDS_GROUPS,
    LIMIT_POSITIVE,
    PROMPT_OBJECT,
    builder_comparison,
)
from agents.models import AgentVersion
from agents.policy import parse_policy
from agents.runtime import execute_run
from agents.services import Conflict, ServiceError, run_start, version_publish
from audit.models import AuditEvent
from audit.verbs import Verb
from tests.agents.test_dryrun import DRAFT, HISTORY, LIVE, independent_replay

pytestmark = pytest.mark.django_db

ROGUE = "tests.support.agents.rogue"
RULES: list[dict[str, str]] = [
    {"tool": "test.pay", "when": "amount <= 500", "effect": "allow", "reason": "small"},
    {
        "tool": "test.pay",
        "effect": "approve",
        "approvals": "2",
        "approvers": roles.SUPERVISOR,
        "timeout": "4h",
        "on_timeout": "reject",
    },
    {"tool": "test.*", "effect": "shadow"},
]


def client_of(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def form(
    rules: list[dict[str, Any]],
    limits: list[dict[str, Any]] | None = None,
    *,
    config: str = '{"model": "scripted"}',
    prompt: str = "",
    note: str = "",
    action: str = "save",
    order: list[int] | None = None,
) -> dict[str, Any]:
    """The editor's fields as a browser posts them."""
    data: dict[str, Any] = {
        "rules-count": len(rules),
        "limits-count": len(limits or []),
        "config": config,
        "prompt": prompt,
        "note": note,
        "action": action,
    }
    for i, rule in enumerate(rules):
        data[f"rules-{i}-order"] = order[i] if order else i
        for name, value in rule.items():
            data[f"rules-{i}-{name}"] = value
    for i, limit in enumerate(limits or []):
        for name, value in limit.items():
            data[f"limits-{i}-{name}"] = value
    return data


def as_fields(policy: dict[str, Any]) -> list[dict[str, Any]]:
    """A policy's rules as the editor's text fields."""
    return [{k: str(v) for k, v in rule.items()} for rule in policy["rules"]]


def saved_events() -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(verb=Verb.VERSION_DRAFT_SAVED).order_by("seq"))


def snapshot(version: AgentVersion) -> dict[str, Any]:
    return dict(AgentVersion.objects.filter(pk=version.pk).values().get())


@pytest.fixture
def agent(make_agent: Any) -> Any:
    return make_agent("payer", ROGUE, LIVE)


@pytest.fixture
def draft(agent: Any, world: Any) -> AgentVersion:
    return version_draft_new(agent=agent, user=world.admin)


def edit_url(version: AgentVersion) -> str:
    return f"/agents/{version.agent.slug}/versions/{version.number}/edit/"


# --- drafts -------------------------------------------------------------------------------


def test_a_new_draft_is_a_copy_of_the_live_version(agent: Any, draft: AgentVersion) -> None:
    live = agent.live_version
    assert draft.number == live.number + 1 and draft.published_at is None
    assert (draft.policy, draft.config, draft.program) == (live.policy, live.config, live.program)
    assert draft.note == f"from v{live.number}"


def test_the_new_draft_button_opens_the_editor(agent: Any, world: Any) -> None:
    response = client_of(world.admin).post(f"/agents/{agent.slug}/versions/new")
    version = agent.versions.get(number=2)
    assert response.status_code == 302 and response["Location"] == edit_url(version)
    page = client_of(world.admin).get(response["Location"])
    assert page.status_code == 200
    assert 'value="amount &lt;= 500"' in page.content.decode()


def test_the_agent_page_offers_admins_edit_on_drafts_only(
    agent: Any, draft: AgentVersion, world: Any
) -> None:
    page = client_of(world.admin).get(f"/agents/{agent.slug}/").content.decode()
    assert f'href="{edit_url(draft)}"' in page and 'data-testid="new-draft"' in page
    assert "/versions/1/edit/" not in page
    supervisor_page = client_of(world.supervisor).get(f"/agents/{agent.slug}/").content.decode()
    assert "/edit/" not in supervisor_page and "new-draft" not in supervisor_page


def test_an_admin_saves_a_valid_draft_and_the_change_is_audited(
    draft: AgentVersion, world: Any
) -> None:
    before = {"policy": draft.policy, "config": draft.config, "note": draft.note}
    data = form(
        RULES,
        [{"tool": "test.pay", "limit": "5", "per": "1m"}],
        prompt='{"system": "You pay claims."}',
        note="tighter payouts",
    )
    client = client_of(world.admin)
    response = client.post(edit_url(draft), data)
    assert response.status_code == 302, response.content.decode()[:2000]
    draft.refresh_from_db()
    assert draft.policy == {
        "rules": [
            {"tool": "test.pay", "effect": "allow", "when": "amount <= 500", "reason": "small"},
            {
                "tool": "test.pay",
                "effect": "approve",
                "approvals": 2,
                "timeout": "4h",
                "approvers": roles.SUPERVISOR,
            },
            {"tool": "test.*", "effect": "shadow"},
        ],
        "rate_limits": [{"tool": "test.pay", "limit": 5, "per": "1m"}],
    }
    parse_policy(draft.policy)
    assert draft.config == {"model": "scripted", "prompt": {"system": "You pay claims."}}
    assert draft.note == "tighter payouts" and draft.published_at is None
    (event,) = saved_events()
    assert event.actor_id == world.admin.pk and event.subject_id == str(draft.pk)
    assert event.payload["before"] == before
    assert event.payload["after"] == {
        "policy": draft.policy,
        "config": draft.config,
        "note": "tighter payouts",
    }
    # The page drawn again shows what was saved, the prompt in its own field.
    page = client.get(edit_url(draft)).content.decode()
    assert escape('"system": "You pay claims."') in page
    assert "v2 saved" in page


def test_saving_the_same_content_again_records_nothing(draft: AgentVersion, world: Any) -> None:
    client = client_of(world.admin)
    assert client.post(edit_url(draft), form(RULES)).status_code == 302
    assert client.post(edit_url(draft), form(RULES)).status_code == 302
    assert len(saved_events()) == 1


INVALID = [
    # (what is wrong, the rules, the limits, the form's other fields, the field, message)
    (
        "invalid condition",
        [{"tool": "test.pay", "when": "amount >> 5", "effect": "allow"}],
        [],
        {},
        "rules-0-when",
        "unexpected '>'",
    ),
    (
        "unknown tool",
        [{"tool": "test.pay", "effect": "allow"}, {"tool": "nosuch.*", "effect": "allow"}],
        [],
        {},
        "rules-1-tool",
        UNKNOWN_TOOL.format(tool="nosuch.*"),
    ),
    (
        "unknown approver group",
        [{"tool": "test.pay", "effect": "approve", "approvers": "Night shift"}],
        [],
        {},
        "rules-0-approvers",
        UNKNOWN_GROUP.format(group="Night shift"),
    ),
    (
        "unknown group to escalate to",
        [{"tool": "test.pay", "effect": "approve", "escalate_to": f"{roles.SUPERVISOR}, Nobody"}],
        [],
        {},
        "rules-0-escalate_to",
        UNKNOWN_GROUP.format(group="Nobody"),
    ),
    (
        "escalation without a group",
        [{"tool": "test.pay", "effect": "approve", "on_timeout": "escalate"}],
        [],
        {},
        "rules-0-escalate_to",
        ESCALATE_NEEDS_GROUPS,
    ),
    (
        "negative rate",
        [{"tool": "test.pay", "effect": "allow"}],
        [{"tool": "test.pay", "limit": "-5", "per": "60"}],
        {},
        "limits-0-limit",
        LIMIT_POSITIVE,
    ),
    (
        "zero rate",
        [{"tool": "test.pay", "effect": "allow"}],
        [{"tool": "test.pay", "limit": "0", "per": "60"}],
        {},
        "limits-0-limit",
        LIMIT_POSITIVE,
    ),
    (
        "config not a JSON object",
        [{"tool": "test.pay", "effect": "allow"}],
        [],
        {"config": '["model", "scripted"]'},
        "config",
        CONFIG_OBJECT,
    ),
    (
        "config not JSON",
        [{"tool": "test.pay", "effect": "allow"}],
        [],
        {"config": '{"model": scripted}'},
        "config",
        "not JSON: Expecting value (line 1, column 11)",
    ),
    (
        "prompt not a JSON object",
        [{"tool": "test.pay", "effect": "allow"}],
        [],
        {"prompt": '"You pay claims."'},
        "prompt",
        PROMPT_OBJECT,
    ),
]


@pytest.mark.parametrize(
    ("rules", "limits", "other", "field", "message"),
    [case[1:] for case in INVALID],
    ids=[case[0] for case in INVALID],
)
def test_bad_input_is_a_message_next_to_its_field_and_nothing_is_saved(
    draft: AgentVersion,
    world: Any,
    rules: list[dict[str, Any]],
    limits: list[dict[str, Any]],
    other: dict[str, str],
    field: str,
    message: str,
) -> None:
    before = snapshot(draft)
    response = client_of(world.admin).post(edit_url(draft), {**form(rules, limits), **other})
    assert response.status_code == 400
    page = response.content.decode()
    # The message sits next to the field, which points at it.
    assert f'id="{field}-error">{escape(message)}' in page, page[:3000]
    assert f'aria-describedby="{field}-error"' in page
    assert page.count('class="error" id="') == 1  # no other field is blamed
    assert snapshot(draft) == before
    assert saved_events() == []


def test_what_was_typed_is_kept_when_the_form_is_refused(draft: AgentVersion, world: Any) -> None:
    rules = [{"tool": "test.pay", "when": "amount >> 5", "effect": "deny", "reason": "kept"}]
    page = client_of(world.admin).post(edit_url(draft), form(rules)).content.decode()
    assert 'value="amount &gt;&gt; 5"' in page and 'value="kept"' in page
    assert '<option value="deny" selected>' in page


def test_the_service_refuses_what_the_form_would_and_changes_nothing(
    draft: AgentVersion, world: Any
) -> None:
    before = snapshot(draft)
    for policy in (
        {"rules": [{"tool": "nosuch.tool", "effect": "allow"}]},
        {"rules": [{"tool": "test.pay", "effect": "approve", "approvers": "Night shift"}]},
        {"rules": [{"tool": "test.pay", "effect": "maybe"}]},
        {"rules": [], "rate_limits": [{"tool": "test.pay", "limit": -1, "per": 60}]},
    ):
        with pytest.raises(ServiceError):
            version_draft_save(version=draft, policy=policy, config={}, user=world.admin)
    with pytest.raises(ServiceError):
        version_draft_save(version=draft, policy={}, config=[], user=world.admin)  # type: ignore[arg-type]
    assert snapshot(draft) == before and saved_events() == []


# --- published versions never change ------------------------------------------------------


def test_a_published_version_cannot_be_saved(agent: Any, world: Any) -> None:
    live = agent.live_version
    before = snapshot(live)
    with pytest.raises(Conflict, match="never changes"):
        version_draft_save(version=live, policy={"rules": []}, config={}, note="", user=world.admin)
    response = client_of(world.admin).post(edit_url(live), form(RULES))
    assert response.status_code == 409
    assert escape(PUBLISHED_IS_FINAL.format(number=live.number)) in response.content.decode()
    assert snapshot(live) == before and saved_events() == []


def test_a_draft_published_meanwhile_is_not_changed_by_a_stale_save(
    draft: AgentVersion, world: Any
) -> None:
    stale = AgentVersion.objects.get(pk=draft.pk)  # loaded while still a draft
    version_publish(version=draft, user=None, reason="published first", live=False)
    before = snapshot(draft)
    with pytest.raises(Conflict):
        version_draft_save(version=stale, policy={"rules": []}, config={}, user=world.admin)
    assert snapshot(draft) == before and saved_events() == []


def test_a_published_version_opens_read_only(agent: Any, world: Any) -> None:
    page = client_of(world.admin).get(edit_url(agent.live_version)).content.decode()
    assert 'data-testid="read-only"' in page
    assert '<fieldset class="editor-fields" disabled>' in page
    assert 'data-testid="save"' not in page


# --- reordering, adding, removing and the condition builder, all without JavaScript -------


def tools_on_page(page: str) -> list[str]:
    return re.findall(r'name="rules-\d+-tool" value="([^"]*)"', page)


def test_move_buttons_reorder_the_rules_without_saving(draft: AgentVersion, world: Any) -> None:
    before = snapshot(draft)
    client = client_of(world.admin)
    rules = [{"tool": t, "effect": "allow"} for t in ("test.pay", "test.count", "test.held")]
    down = client.post(edit_url(draft), form(rules, action="down-0"))
    assert down.status_code == 200
    assert tools_on_page(down.content.decode()) == ["test.count", "test.pay", "test.held"]
    up = client.post(edit_url(draft), form(rules, action="up-2"))
    assert tools_on_page(up.content.decode()) == ["test.pay", "test.held", "test.count"]
    # Past either end, nothing moves.
    top = client.post(edit_url(draft), form(rules, action="up-0"))
    assert tools_on_page(top.content.decode()) == ["test.pay", "test.count", "test.held"]
    assert 'data-testid="unsaved"' in down.content.decode()
    assert snapshot(draft) == before and saved_events() == []


def test_the_order_fields_decide_the_saved_order(draft: AgentVersion, world: Any) -> None:
    # What rules.js posts after a drag or Alt+Arrow: fields keep their index, `order` moves.
    rules = [{"tool": t, "effect": "allow"} for t in ("test.pay", "test.count", "test.held")]
    response = client_of(world.admin).post(edit_url(draft), form(rules, order=[2, 0, 1]))
    assert response.status_code == 302
    draft.refresh_from_db()
    assert [r["tool"] for r in draft.policy["rules"]] == ["test.count", "test.held", "test.pay"]
    # A button names its rule by the index of its fields, wherever `order` put it.
    moved = client_of(world.admin).post(
        edit_url(draft), form(rules, order=[2, 0, 1], action="up-0")
    )
    assert tools_on_page(moved.content.decode()) == ["test.count", "test.pay", "test.held"]


def test_add_and_remove_rules_and_limits(draft: AgentVersion, world: Any) -> None:
    client = client_of(world.admin)
    rules = [{"tool": "test.pay", "effect": "allow"}, {"tool": "test.count", "effect": "deny"}]
    added = client.post(edit_url(draft), form(rules, action="add")).content.decode()
    assert tools_on_page(added) == ["test.pay", "test.count", ""]
    removed = client.post(edit_url(draft), form(rules, action="remove-0")).content.decode()
    assert tools_on_page(removed) == ["test.count"]
    limits = [{"tool": "test.pay", "limit": "3", "per": "60"}]
    more = client.post(edit_url(draft), form(rules, limits, action="add-limit")).content.decode()
    assert 'name="limits-1-tool"' in more
    fewer = client.post(edit_url(draft), form(rules, limits, action="remove-limit-0"))
    assert 'name="limits-0-tool"' not in fewer.content.decode()


def test_an_unknown_action_is_refused(draft: AgentVersion, world: Any) -> None:
    response = client_of(world.admin).post(edit_url(draft), form(RULES, action="explode-1"))
    assert response.status_code == 400 and saved_events() == []


@pytest.mark.parametrize(
    ("arg", "op", "value", "text"),
    [
        ("amount", "<=", "500", "amount <= 500"),
        ("amount", ">", "12.50", "amount > 12.5"),
        ("currency", "==", "EUR", 'currency == "EUR"'),
        ("currency", "!=", '"true"', 'currency != "true"'),
        ("urgent", "==", "true", "urgent == true"),
        ("payee.country", "in", "DE, FR", 'payee.country in ["DE", "FR"]'),
        ("amount", "not in", "1, 2", "amount not in [1, 2]"),
    ],
)
def test_the_condition_builder_writes_the_condition_language(
    arg: str, op: str, value: str, text: str
) -> None:
    assert builder_comparison(arg, op, value) == text


def test_the_builder_adds_its_comparison_to_the_condition_text(
    draft: AgentVersion, world: Any
) -> None:
    client = client_of(world.admin)
    rules = [
        {
            "tool": "test.pay",
            "effect": "allow",
            "when": "currency == 'EUR'",
            "arg": "amount",
            "op": "<=",
            "value": "500",
        }
    ]
    page = client.post(edit_url(draft), form(rules, action="cond-0")).content.decode()
    assert 'value="currency == &quot;EUR&quot; and amount &lt;= 500"' in page
    assert 'name="rules-0-arg" value=""' in page
    # A comparison left in the builder is not lost on save; a bad one is refused in place.
    assert client.post(edit_url(draft), form(rules)).status_code == 302
    draft.refresh_from_db()
    assert draft.policy["rules"][0]["when"] == 'currency == "EUR" and amount <= 500'
    bad = [{**rules[0], "arg": "not", "value": "1"}]
    refused = client.post(edit_url(draft), form(bad))
    assert refused.status_code == 400
    assert 'id="rules-0-arg-error">' in refused.content.decode()


# --- the dry-run of the unsaved form ------------------------------------------------------


@pytest.fixture
def history(agent: Any) -> Any:
    for calls in HISTORY:
        run = run_start(agent=agent, input={"calls": [list(call) for call in calls]})
        execute_run(run.pk)
    return agent


def test_the_unsaved_form_dry_runs_to_an_independent_replay_and_saves_nothing(
    history: Any, draft: AgentVersion, world: Any
) -> None:
    before = snapshot(draft)
    data = {**form(as_fields(DRAFT), action="dry-run"), "n": "100"}
    url = f"/agents/{history.slug}/versions/{draft.number}/dry-run/"
    response = client_of(world.admin).post(url, data)
    assert response.status_code == 200
    result = response.context["dry_run"]
    assert result.counts() == independent_replay(history, DRAFT)
    assert result.counts() != independent_replay(history, draft.policy)  # it is not the saved one
    page = response.content.decode()
    assert 'data-testid="transition-allowed-held"' in page
    assert "/runs/" in page and "#step-" in page  # links to examples
    # The form is drawn again as posted, for more editing.
    assert tools_on_page(page) == [r["tool"] for r in DRAFT["rules"]]
    assert snapshot(draft) == before and saved_events() == []


def test_the_dry_run_of_an_invalid_form_shows_the_fields_and_runs_nothing(
    history: Any, draft: AgentVersion, world: Any
) -> None:
    data = form([{"tool": "nosuch.tool", "effect": "allow"}], action="dry-run")
    url = f"/agents/{history.slug}/versions/{draft.number}/dry-run/"
    response = client_of(world.admin).post(url, data)
    assert response.status_code == 400
    assert 'id="rules-0-tool-error"' in response.content.decode()
    assert response.context.get("dry_run") is None


def test_the_dry_run_of_a_saved_version_still_answers_get(history: Any, world: Any) -> None:
    url = f"/agents/{history.slug}/versions/1/dry-run/"
    response = client_of(world.admin).get(url)
    assert response.status_code == 200
    assert response.context["result"].counts() == Counter(
        independent_replay(history, history.live_version.policy)
    )


# --- who may edit -------------------------------------------------------------------------


def support_admin(world: Any) -> Any:
    bea = get_user_model().objects.create_user("bea")
    roles.role_grant(user=bea, role=roles.AGENT_ADMIN, target=world.support)
    return bea


@pytest.mark.parametrize(("who", "status"), [("supervisor", 403), ("compliance", 403)])
def test_people_who_do_not_administer_the_agent_change_nothing(
    agent: Any, draft: AgentVersion, world: Any, who: str, status: int
) -> None:
    check_refused(client_of(getattr(world, who)), agent, draft, status)


def test_an_admin_of_another_team_changes_nothing(
    agent: Any, draft: AgentVersion, world: Any
) -> None:
    bea = support_admin(world)
    check_refused(client_of(bea), agent, draft, 404)
    # The services ask too, whoever calls them.
    with pytest.raises(PermissionDenied):
        version_draft_save(version=draft, policy={"rules": []}, config={}, user=bea)
    with pytest.raises(PermissionDenied):
        version_draft_new(agent=agent, user=bea)
    assert saved_events() == [] and agent.versions.count() == 2


def check_refused(client: Client, agent: Any, draft: AgentVersion, status: int) -> None:
    before = list(AgentVersion.objects.filter(agent=agent).values().order_by("pk"))
    slug = agent.slug
    answers = [
        client.get(edit_url(draft)),
        client.post(edit_url(draft), form(RULES)),
        client.post(edit_url(draft), form(RULES, action="down-0")),
        client.post(f"/agents/{slug}/versions/new"),
        client.post(f"/agents/{slug}/versions/{draft.number}/dry-run/", form(RULES)),
    ]
    assert [a.status_code for a in answers] == [status] * len(answers)
    assert list(AgentVersion.objects.filter(agent=agent).values().order_by("pk")) == before
    assert saved_events() == []
