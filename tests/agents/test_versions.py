"""Agent versions are immutable once published (a draft's policy, config and note may
change, nothing else); policies are validated when written."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import DatabaseError, transaction

from agents.models import AgentVersion
from agents.services import ServiceError, version_create, version_publish
from tests.conftest import ALLOW_ALL_TESTS

pytestmark = pytest.mark.django_db


def test_a_versions_policy_cannot_be_edited_even_by_the_orm(make_agent: Any) -> None:
    agent = make_agent("counter", "tests.support.agents.counter", ALLOW_ALL_TESTS)
    version = agent.live_version
    with pytest.raises(DatabaseError, match="immutable"), transaction.atomic():
        AgentVersion.objects.filter(pk=version.pk).update(policy={"rules": []})
    version.refresh_from_db()
    assert version.policy == ALLOW_ALL_TESTS


def test_a_published_version_cannot_be_unpublished_nor_its_note_changed(make_agent: Any) -> None:
    agent = make_agent("counter", "tests.support.agents.counter", ALLOW_ALL_TESTS)
    version = agent.live_version
    changes: list[dict[str, Any]] = [{"published_at": None}, {"note": "rewritten"}, {"config": {}}]
    for change in changes:
        with pytest.raises(DatabaseError, match="immutable"), transaction.atomic():
            AgentVersion.objects.filter(pk=version.pk).update(**change)
    assert AgentVersion.objects.get(pk=version.pk).published_at == version.published_at


def test_the_database_lets_a_draft_change_its_content_but_not_what_names_it(
    make_agent: Any, world: Any
) -> None:
    agent = make_agent("counter", "tests.support.agents.counter", ALLOW_ALL_TESTS)
    draft = version_create(
        agent=agent, program="tests.support.agents.counter", policy={"rules": []}, user=world.admin
    )
    AgentVersion.objects.filter(pk=draft.pk).update(policy=ALLOW_ALL_TESTS, note="edited")
    for change in ({"number": 9}, {"program": "elsewhere"}, {"author": None}):
        with pytest.raises(DatabaseError, match="immutable"), transaction.atomic():
            AgentVersion.objects.filter(pk=draft.pk).update(**change)
    draft.refresh_from_db()
    assert (draft.policy, draft.note, draft.number) == (ALLOW_ALL_TESTS, "edited", 2)


def test_publishing_a_new_version_retires_the_old_one(make_agent: Any, world: Any) -> None:
    agent = make_agent("counter", "tests.support.agents.counter", ALLOW_ALL_TESTS)
    first = agent.live_version
    second = version_create(
        agent=agent, program="tests.support.agents.counter", policy={"rules": []}, user=world.admin
    )
    assert second.number == 2 and second.stage == AgentVersion.Stage.DRAFT
    version_publish(version=second, user=None, reason="tighter policy")
    agent.refresh_from_db()
    first.refresh_from_db()
    assert agent.live_version == second and first.stage == AgentVersion.Stage.RETIRED


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"rules": [{"tool": "x", "effect": "maybe"}]}, "rule 1: 'effect' is one of"),
        ({"rules": [{"tool": "x", "effect": "allow", "when": "amount <"}]}, "rule 1: condition"),
        ({"rules": [{"tool": "x", "effect": "approve", "approvals": 0}]}, "'approvals'"),
        ({"rules": [{"tool": "x", "effect": "approve", "timeout": "soon"}]}, "a duration"),
        ({"rules": [{"tool": "x", "effect": "allow", "colour": "red"}]}, "unknown field"),
        ({"rate_limits": [{"tool": "x", "limit": 0, "per": 60}]}, "'limit'"),
        (["allow everything"], "a policy is an object"),
    ],
)
def test_an_invalid_policy_is_refused_with_a_clear_message(
    make_agent: Any, world: Any, policy: Any, message: str
) -> None:
    agent = make_agent("counter", "tests.support.agents.counter", ALLOW_ALL_TESTS)
    with pytest.raises(ServiceError, match=message.replace("(", r"\(")):
        version_create(
            agent=agent, program="tests.support.agents.counter", policy=policy, user=world.admin
        )
    assert agent.versions.count() == 1


def test_an_unregistered_program_is_refused(make_agent: Any, world: Any) -> None:
    agent = make_agent("counter", "tests.support.agents.counter", ALLOW_ALL_TESTS)
    with pytest.raises(ServiceError, match="no agent program 'os.system' is registered"):
        version_create(agent=agent, program="os.system", policy={}, user=world.admin)
