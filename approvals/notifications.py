"""Telling people and systems that an approval request needs them (DESIGN section 5).

Services call `notify_on_commit` inside their transaction; nothing leaves the process
until that transaction commits, so a rolled-back change never reaches an inbox or a
webhook. On commit, e-mail goes out synchronously to the people who may decide, and each
configured webhook gets a Celery task that signs and POSTs the event (`approvals.tasks`).

Webhooks follow Standard Webhooks (https://www.standardwebhooks.com), signed with the
`standardwebhooks` library: `webhook-id` (the same for every retry of one event, so a
receiver deduplicates), `webhook-timestamp` (bounds how long a captured request can be
replayed) and `webhook-signature` (`v1,<base64 HMAC-SHA256>` over `id.timestamp.body`), so
receivers verify in any language with that project's libraries. BATON_WEBHOOK_SECRET is a
`whsec_<base64>` secret (`python manage.py webhook_secret` makes one); a secret without the
prefix is used as its UTF-8 bytes, as before.

For one release the old header is sent too: `X-Baton-Signature: t=<unix seconds>,v1=<hex
HMAC>` over `f"{t}.{body}"` with the secret as written (`sign`, `verify`); receivers move
to the standard headers, then it goes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import smtplib
from datetime import UTC, datetime
from typing import Any

from celery import current_app
from django.conf import settings
from django.core.mail import EmailMessage, get_connection
from django.db import transaction
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError
from standardwebhooks.webhooks import Webhook

from approvals.models import ApprovalRequest
from approvals.selectors import deciders

logger = logging.getLogger(__name__)

EVENTS = ("approval.requested", "approval.escalated", "approval.expired")
SIGNATURE_HEADER = "X-Baton-Signature"  # the old signature, sent for one more release
EVENT_HEADER = "X-Baton-Event"
SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret
WHSEC_MALFORMED = (
    "BATON_WEBHOOK_SECRET starts with whsec_ but the rest is not base64 of at least 24 bytes: "  # noqa: S105 - a message, not a secret
    "make one with `python manage.py webhook_secret`"
)
# Sent by name: approvals.tasks delivers it and imports this module, not the other way.
WEBHOOK_TASK = "approvals.webhook_deliver"
UNSIGNED_REFUSED = (
    "BATON_WEBHOOK_URLS is set but BATON_WEBHOOK_SECRET is empty: "
    "%s for approval %s not sent to %d webhook(s); webhooks are never sent unsigned"
)


def notify_on_commit(*, event: str, request_id: int) -> None:
    if event not in EVENTS:
        # A typo here would silently tell nobody; fail inside the caller's transaction.
        raise ValueError(f"unknown approval event {event!r}; expected one of {EVENTS}")

    # robust: a failing notification is logged and never turns a committed decision into
    # an error for the person (or worker) who made it. A plain function, not a partial:
    # Django logs a robust hook's failure by its __qualname__, which a partial lacks, and
    # the logging itself would raise and skip the hooks after it (Django ticket #36487).
    def notify() -> None:
        _notify(event, request_id)

    transaction.on_commit(notify, robust=True)


def _notify(event: str, request_id: int) -> None:
    request = ApprovalRequest.objects.select_related("agent__team").filter(pk=request_id).first()
    if request is None:
        logger.error("approval %s vanished before its %s notification", request_id, event)
        return
    # Webhooks first: enqueueing is quick, while SMTP may be slow to answer or time out.
    _enqueue_webhooks(event, request)
    _send_mail(event, request)


# --- webhooks ---------------------------------------------------------------------------


def approval_url(request: ApprovalRequest) -> str:
    base: str = getattr(settings, "BATON_BASE_URL", "") or ""
    return f"{base.rstrip('/')}/approvals/{request.pk}/"


def _iso_utc(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def webhook_body(*, event: str, request: ApprovalRequest) -> str:
    """The JSON the receivers get. Canonical (sorted keys, no spaces, ASCII only) so the
    bytes that were signed are exactly the bytes sent, whatever the receiver's JSON
    library would make of them."""
    payload: dict[str, Any] = {
        "event": event,
        "request_id": request.pk,
        "status": request.status,
        "agent": {"slug": request.agent.slug, "name": request.agent.name},
        "team": {"slug": request.agent.team.slug},
        "tool": request.tool,
        "args": request.args,
        "risk": request.risk,
        "required_approvals": request.required_approvals,
        "due_at": _iso_utc(request.due_at),
        "escalation_level": request.escalation_level,
        "run_id": request.run_id,
        "url": approval_url(request),
    }
    return json.dumps(payload, sort_keys=True, separators=(",", ":"))


def message_id(body: str) -> str:
    """The webhook-id of an event: derived from what is sent, so every retry of one event,
    and the same event enqueued twice, carry the same id and a receiver keeps one."""
    return "msg_" + hashlib.sha256(body.encode()).hexdigest()[:32]


def secret_key(secret: str) -> bytes:
    """The HMAC key of BATON_WEBHOOK_SECRET: the bytes a whsec_ secret encodes, or the
    secret's own UTF-8 bytes. ValueError for an empty or malformed whsec_ secret."""
    if not secret:
        # An HMAC under an empty key is a signature anyone can forge.
        raise ValueError("refusing to sign a webhook with an empty secret")
    if not secret.startswith(SECRET_PREFIX):
        return secret.encode()
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except binascii.Error:
        raise ValueError(WHSEC_MALFORMED) from None
    if len(key) < 24:
        raise ValueError(WHSEC_MALFORMED)
    return key


def standard_headers(*, secret: str, msg_id: str, body: str, timestamp: int) -> dict[str, str]:
    """The Standard Webhooks headers of `body` sent at `timestamp` (signed by the library)."""
    moment = datetime.fromtimestamp(timestamp, tz=UTC)
    signature = Webhook(secret_key(secret)).sign(msg_id, moment, body)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


def _mac(secret: str, body: str, timestamp: int) -> str:
    signed = f"{timestamp}.{body}".encode()
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def sign(*, secret: str, body: str, timestamp: int) -> str:
    """The old X-Baton-Signature header value for `body` sent at `timestamp`."""
    if not secret:
        # An HMAC under an empty key is a signature anyone can forge.
        raise ValueError("refusing to sign a webhook with an empty secret")
    return f"t={timestamp},v1={_mac(secret, body, timestamp)}"


def verify(*, secret: str, header: str, body: str, now: int, tolerance: int = 300) -> bool:
    """True if `header` is a valid signature of `body` by `secret`, made within
    `tolerance` seconds of `now` either way. Several v1 values are allowed, as with
    Stripe, so a sender can sign with an old and a new secret while rotating."""
    if not secret or not header:
        return False
    timestamps: list[str] = []
    macs: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep or not value:
            return False
        if key == "t":
            timestamps.append(value)
        elif key == "v1":
            macs.append(value)
    # Exactly one timestamp, digits only: "t=1,t=2" or "t=-5" is not something we send.
    if len(timestamps) != 1 or not timestamps[0].isascii() or not timestamps[0].isdigit():
        return False
    if not macs:
        return False
    timestamp = int(timestamps[0])
    if abs(now - timestamp) > tolerance:
        return False
    expected = _mac(secret, body, timestamp).encode()
    # Bytes, not str: compare_digest refuses non-ASCII str, and a header is attacker input.
    return any(hmac.compare_digest(expected, mac.encode()) for mac in macs)


def _enqueue_webhooks(event: str, request: ApprovalRequest) -> None:
    urls: list[str] = list(getattr(settings, "BATON_WEBHOOK_URLS", []) or [])
    if not urls:
        return
    if not getattr(settings, "BATON_WEBHOOK_SECRET", ""):
        logger.error(UNSIGNED_REFUSED, event, request.pk, len(urls))
        return
    body = webhook_body(event=event, request=request)
    for url in urls:
        try:
            current_app.signature(WEBHOOK_TASK, args=(url, body, message_id(body))).delay()
        except BrokerError:
            # The broker being down must not stop the other URLs or the e-mail.
            logger.exception("could not enqueue %s for approval %s to %s", event, request.pk, url)


# --- e-mail -----------------------------------------------------------------------------


def recipients(request: ApprovalRequest) -> list[Any]:
    """The people to tell: those who may decide the request (approvals.selectors.deciders,
    the one rule), with an e-mail address."""
    return [person for person in deciders(request) if person.email]


def _one_line(text: str) -> str:
    # Names come from people; a newline in a subject is a header-injection error.
    return " ".join(str(text).split())


def _when(moment: datetime | None) -> str:
    if moment is None:
        return "no deadline"
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M %Z")


def _subject(event: str, request: ApprovalRequest) -> str:
    what = f"{request.tool} by {request.agent.name}"
    if event == "approval.requested":
        text = f"[Baton] Approval needed: {what}, due {_when(request.due_at)}"
    elif event == "approval.escalated":
        text = (
            f"[Baton] Escalated (level {request.escalation_level}): {what}, "
            f"due {_when(request.due_at)}"
        )
    else:
        text = f"[Baton] Expired undecided: {what}"
    return _one_line(text)


def _body(event: str, request: ApprovalRequest) -> str:
    agent = request.agent
    if event == "approval.expired":
        opening = (
            f"Nobody decided in time, so {agent.name} ({agent.slug}, team {agent.team.name}) "
            f"was refused {request.tool}: timeouts fail closed."
        )
    else:
        opening = (
            f"{agent.name} ({agent.slug}, team {agent.team.name}) wants to call "
            f"{request.tool}.\nDecide by {_when(request.due_at)}."
        )
        if event == "approval.escalated":
            opening += f"\nThis request has escalated to level {request.escalation_level}."
    arguments = json.dumps(request.args, indent=2, sort_keys=True, ensure_ascii=False)
    return (
        f"{opening}\n\n"
        f"Risk: {request.risk}. Approvals needed: {request.required_approvals}.\n"
        f"Arguments:\n{arguments}\n\n"
        f"{approval_url(request)}\n"
    )


def _send_mail(event: str, request: ApprovalRequest) -> None:
    addresses = [person.email for person in recipients(request)]
    if not addresses:
        return
    subject, body = _subject(event, request), _body(event, request)
    # One message each: supervisors of one team need not learn each other's addresses,
    # and one connection carries them all.
    messages = [EmailMessage(subject=subject, body=body, to=[address]) for address in addresses]
    try:
        get_connection(fail_silently=False).send_messages(messages)
    except (smtplib.SMTPException, OSError):
        # A mail outage must never break a decision; the console's queue still shows it.
        logger.exception("could not e-mail %s for approval %s", event, request.pk)
