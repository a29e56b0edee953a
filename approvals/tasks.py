"""Approval timers and deliveries: expiring requests nobody decided in time, and delivering
approval events to webhooks with retries (see approvals.notifications)."""

from __future__ import annotations

import http.client
import json
import logging
import time
import urllib.error
import urllib.request
from typing import Any

from celery import Task, shared_task
from django.conf import settings

from approvals.notifications import (
    EVENT_HEADER,
    SIGNATURE_HEADER,
    WEBHOOK_TASK,
    message_id,
    sign,
    standard_headers,
)

logger = logging.getLogger(__name__)

TIMEOUT_SECONDS = 10
MAX_RETRIES = 8
# A 4xx says the receiver will never take this body; these two only say "not now".
RETRYABLE_4XX = (408, 429)


def backoff(retries: int) -> int:
    """Seconds before the next attempt: 5, 10, 20 … capped at ten minutes."""
    return int(min(2**retries * 5, 600))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # urllib would follow a 302 by re-sending the POST as a bodiless GET, possibly to
    # another host, and report that host's 200 as a delivery. A redirect is a failure.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def _post(url: str, body: str, headers: dict[str, str]) -> tuple[int | None, str]:
    """(status, detail): status None when no HTTP answer came back at all."""
    # The caller has checked the scheme: only http(s), never file: or ftp:.
    request = urllib.request.Request(url, body.encode(), headers, method="POST")  # noqa: S310
    try:
        with _opener.open(request, timeout=TIMEOUT_SECONDS) as response:
            return response.status, response.reason
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code, str(exc.reason)
    except (OSError, http.client.HTTPException) as exc:
        # URLError (refused, DNS), timeouts and resets are OSErrors; a garbled status
        # line is an HTTPException. All of them may pass, so all of them retry.
        return None, f"{type(exc).__name__}: {exc}"


@shared_task(bind=True, name=WEBHOOK_TASK, acks_late=True, max_retries=MAX_RETRIES)
def webhook_deliver(self: Task[Any, Any], url: str, body: str, msg_id: str = "") -> bool:
    """POST one signed event to one URL. True once delivered; False when given up.
    (`msg_id` is derived from the body when a message enqueued before it existed has none.)"""
    if not url.lower().startswith(("http://", "https://")):
        logger.error("webhook %s is not an http(s) URL; not delivering", url)
        return False
    secret: str = getattr(settings, "BATON_WEBHOOK_SECRET", "")
    if not secret:
        logger.error("BATON_WEBHOOK_SECRET is empty; not sending an unsigned webhook to %s", url)
        return False
    event = str(json.loads(body).get("event", ""))
    # Signed now, not when enqueued: a retry an hour later must still pass the receiver's
    # replay window. The id stays: a receiver keeps one copy of an event however often sent.
    now = int(time.time())
    try:
        signed = standard_headers(
            secret=secret, msg_id=msg_id or message_id(body), body=body, timestamp=now
        )
    except ValueError as exc:
        logger.error("%s; not delivering to %s", exc, url)
        return False
    headers = {
        "Content-Type": "application/json",
        EVENT_HEADER: event,
        **signed,
        SIGNATURE_HEADER: sign(secret=secret, body=body, timestamp=now),
        "User-Agent": "Baton-Webhook/2",
    }
    status, detail = _post(url, body, headers)
    attempt = self.request.retries + 1
    if status is not None and 200 <= status < 300:
        logger.info("webhook %s delivered to %s (%s, attempt %d)", event, url, status, attempt)
        return True
    if status is not None and 400 <= status < 500 and status not in RETRYABLE_4XX:
        logger.error(
            "webhook %s to %s refused with %s %s; not retrying", event, url, status, detail
        )
        return False
    outcome = f"{status} {detail}" if status is not None else f"no answer: {detail}"
    if self.request.retries >= MAX_RETRIES:
        logger.error(
            "webhook %s to %s failed (%s) on attempt %d; giving up", event, url, outcome, attempt
        )
        return False
    countdown = backoff(self.request.retries)
    logger.warning(
        "webhook %s to %s failed (%s) on attempt %d; retrying in %ds",
        event,
        url,
        outcome,
        attempt,
        countdown,
    )
    raise self.retry(countdown=countdown)


@shared_task(name="approvals.expire")
def expire() -> int:
    from approvals.services import approvals_expire

    return approvals_expire()
