"""Four-eyes on policy: a team that wants it (Team.publish_needs_second_admin) publishes
only once a second admin of the team approves (issue 11, scope 4).

A publish request is bound to the exact content of the version it would publish, as an
approval request is bound to its action's arguments: the hash of the version's program,
config and policy in the canonical form the audit trail hashes with (audit.chain). An
approval whose version no longer has that content is refused (stale), and an approval
publishes exactly that version, in the approval's own transaction. Whoever asked never
decides their own request: the service refuses it and so does the database
(PublishRequest's publish_decider_is_not_requester).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.core.mail import EmailMessage, get_connection
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from agents.models import Agent, AgentVersion
from agents.permissions import user_can, users_who_can
from agents.services import (
    ALREADY_PUBLISHED,
    Conflict,
    ServiceError,
    password_reconfirm,
    reason_required,
    storable,
    version_publish_locked,
)
from approvals.models import PublishRequest
from audit.chain import canonical_json
from audit.services import Actor, audit_record
from audit.verbs import Verb

if TYPE_CHECKING:
    from django.contrib.auth.models import User
    from django.http import HttpRequest

NO_SECOND_ADMIN = "{team} publishes without a second admin: publish the version directly"
ALREADY_REQUESTED = "v{number} already waits for a second admin's approval"
PUBLISH_DECIDED = "this publish request was already {status}"
OWN_REQUEST = "you asked to publish this version, so another admin must decide it"
NOT_AN_ADMIN = "only an admin of {agent} may decide its publish requests"
STALE_CONTENT = (
    "v{number} changed since its publish was requested: the request no longer matches "
    "it; reject it and ask again"
)
REJECT_NEEDS_REASON = "a rejection needs a reason: it is sent back to whoever asked"


def version_content_hash(version: AgentVersion) -> str:
    """What a publish request is bound to: the version's program, config and policy."""
    content = {"program": version.program, "config": version.config, "policy": version.policy}
    return hashlib.sha256(canonical_json(content)).hexdigest()


def publish_request_open(
    *,
    version: AgentVersion,
    user: User,
    reason: str,
    live: bool,
    password: str,
    request: HttpRequest | None,
) -> PublishRequest:
    """Ask for a second admin to publish `version`: with a reason and the asker's password
    again, as a publish needs. Nothing is published until someone else approves."""
    reason_required(reason)
    password_reconfirm(request=request, user=user, password=password)
    with transaction.atomic(durable=True):
        agent = (
            Agent.objects.select_for_update(no_key=True)
            .select_related("team")
            .get(pk=version.agent_id)
        )
        if not agent.team.publish_needs_second_admin:
            raise ServiceError(NO_SECOND_ADMIN.format(team=agent.team.name))
        fresh = AgentVersion.objects.get(pk=version.pk)
        if fresh.published_at is not None and (not live or agent.live_version_id == fresh.pk):
            raise ServiceError(ALREADY_PUBLISHED.format(number=fresh.number))
        if PublishRequest.objects.filter(version=fresh, status=PublishRequest.Status.PENDING):
            raise Conflict(ALREADY_REQUESTED.format(number=fresh.number))
        publish = PublishRequest.objects.create(
            agent=agent,
            version=fresh,
            content_hash=version_content_hash(fresh),
            live=live,
            reason=reason,
            requested_by=user,
        )
        _audit(publish, Verb.PUBLISH_REQUESTED, user, reason=reason, live=live)
        # The team's other admins are told once it commits (nothing leaves before).
        transaction.on_commit(lambda: _tell_second_admins(publish.pk), robust=True)
    return publish


PUBLISH_SUBJECT = "[Baton] Publish waiting for a second admin: {agent} v{number}"
PUBLISH_BODY = """{asker} asks to publish {agent} v{number}{live}: {reason}

As another admin of {team}, you may approve it (with your password) or reject it (with a
reason) on the agent's rollout page:

{url}

The request is bound to the version's content as it is now; a draft changed since cannot
be approved.
"""


def second_admins(publish: PublishRequest) -> list[Any]:
    """Who may decide a publish request: active admins of its agent, with an e-mail
    address, but never the one who asked."""
    return [
        person
        for person in users_who_can("administer", publish.agent)
        if person.email and person.pk != publish.requested_by_id
    ]


def _tell_second_admins(publish_id: int) -> None:
    publish = PublishRequest.objects.select_related("agent__team", "version", "requested_by").get(
        pk=publish_id
    )
    base = getattr(settings, "BATON_BASE_URL", "") or ""
    context = {
        "asker": publish.requested_by.get_username(),
        "agent": " ".join(publish.agent.name.split()),
        "number": publish.version.number,
        "live": " and make it live" if publish.live else "",
        "reason": publish.reason,
        "team": publish.agent.team.name,
        "url": f"{base.rstrip('/')}/agents/{publish.agent.slug}/rollout/",
    }
    messages = [
        EmailMessage(
            subject=PUBLISH_SUBJECT.format(**context),
            body=PUBLISH_BODY.format(**context),
            to=[person.email],
        )
        for person in second_admins(publish)
    ]
    if messages:
        get_connection().send_messages(messages)


def publish_request_approve(
    *, publish_id: int, user: User, password: str, request: HttpRequest | None
) -> PublishRequest:
    """A second admin approves: the version is published exactly as it was asked for (and
    made live if that was asked), in this transaction. A second approval of the same
    request, even at the same moment, is refused: the request row is locked and must
    still be pending."""
    password_reconfirm(request=request, user=user, password=password)
    with transaction.atomic(durable=True):
        publish, agent = _lock_pending(publish_id, user)
        version = AgentVersion.objects.get(pk=publish.version_id)
        if version_content_hash(version) != publish.content_hash:
            raise Conflict(STALE_CONTENT.format(number=version.number))
        _decide(publish, user, PublishRequest.Status.APPROVED, "")
        _audit(publish, Verb.PUBLISH_APPROVED, user, requested_by=publish.requested_by_id)
        version_publish_locked(
            agent,
            version,
            user=user,
            reason=publish.reason,
            live=publish.live,
            publish_request=publish.pk,
            requested_by=publish.requested_by_id,
        )
    return publish


def publish_request_reject(*, publish_id: int, user: User, reason: str) -> PublishRequest:
    """A second admin turns the publish down, saying why; nothing is published."""
    if not storable(reason, "reason").strip():
        raise ServiceError(REJECT_NEEDS_REASON)
    with transaction.atomic(durable=True):
        publish, _ = _lock_pending(publish_id, user)
        _decide(publish, user, PublishRequest.Status.REJECTED, reason.strip())
        _audit(publish, Verb.PUBLISH_REJECTED, user, reason=reason.strip())
    return publish


def pending_publish_requests(agent: Agent) -> QuerySet[PublishRequest]:
    """The agent's publish requests waiting for a second admin (for its admins' pages)."""
    return (
        PublishRequest.objects.filter(agent=agent, status=PublishRequest.Status.PENDING)
        .select_related("version", "requested_by")
        .order_by("created_at", "pk")
    )


def _lock_pending(publish_id: int, user: User) -> tuple[PublishRequest, Agent]:
    """The agent's row, then the request's (agents.store.LOCK_ORDER), both FOR NO KEY
    UPDATE; the request still pending, and `user` one who may decide it."""
    agent_id = PublishRequest.objects.filter(pk=publish_id).values_list("agent_id", flat=True)
    first = agent_id.first()
    if first is None:
        raise PublishRequest.DoesNotExist(f"no publish request {publish_id}")
    agent = Agent.objects.select_for_update(no_key=True).select_related("team").get(pk=first)
    publish = PublishRequest.objects.select_for_update(no_key=True).get(pk=publish_id)
    if not user_can(user, "administer", agent):
        raise PermissionDenied(NOT_AN_ADMIN.format(agent=agent.name))
    if publish.status != PublishRequest.Status.PENDING:
        raise Conflict(PUBLISH_DECIDED.format(status=publish.status))
    if publish.requested_by_id == user.pk:
        raise ServiceError(OWN_REQUEST)
    publish.agent = agent
    return publish, agent


def _decide(publish: PublishRequest, user: User, status: str, comment: str) -> None:
    # Compare-and-set on the status, under the row lock taken above.
    changed = PublishRequest.objects.filter(
        pk=publish.pk, status=PublishRequest.Status.PENDING
    ).update(status=status, decided_by=user, decided_at=timezone.now(), comment=comment)
    if not changed:
        raise Conflict(PUBLISH_DECIDED.format(status="decided"))
    publish.status, publish.decided_by, publish.comment = status, user, comment


def _audit(publish: PublishRequest, verb: Verb, user: User, **payload: Any) -> None:
    audit_record(
        verb=verb,
        actor=Actor.of(user),
        subject_type="version",
        subject_id=publish.version_id,
        agent=publish.agent,
        payload={
            "publish_request": publish.pk,
            "number": publish.version.number,
            "content_hash": publish.content_hash,
            **payload,
        },
    )
