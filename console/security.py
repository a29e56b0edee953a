"""Sign-in throttling (django-axes): the lock-out page and its audit event.

Every password check goes through `django.contrib.auth.authenticate` with the request —
the login page and the password re-confirmation of the global kill switch alike — so
django-axes counts the failures of both against one person and locks them out together
(`AXES_FAILURE_LIMIT` failures, then `AXES_COOLOFF_TIME`; see the settings)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from audit.services import SYSTEM, audit_record
from audit.verbs import Verb
from console.signin import locked_out_message


def lockout_response(request: HttpRequest, *_: Any) -> HttpResponse:
    """What a locked-out person sees (AXES_LOCKOUT_CALLABLE), on every page that checked
    a password: 429 with the console's layout and how long the lock lasts."""
    return TemplateResponse(
        request, "registration/locked_out.html", {"message": locked_out_message()}, status=429
    ).render()


def _printable(text: str, limit: int) -> str:
    # A username typed at the login page may hold anything; the trail stores text only.
    return "".join(ch for ch in text if ch.isprintable())[:limit]


def lockout_record(*, username: str, ip_address: str, path: str) -> int | None:
    """Audit that an account was locked out after repeated failed password checks."""
    username = _printable(username or "", 150)
    person = get_user_model().objects.filter(username=username).only("pk").first()
    with transaction.atomic():
        return audit_record(
            verb=Verb.LOGIN_LOCKED_OUT,
            actor=SYSTEM,
            subject_type="person",
            subject_id=person.pk if person else "",
            payload={
                "username": username,
                "known": person is not None,
                "ip_address": _printable(ip_address or "", 45),
                "path": _printable(path or "", 200),
                "failures": settings.AXES_FAILURE_LIMIT,
                "cool_off_seconds": int(settings.AXES_COOLOFF_TIME.total_seconds()),
            },
        )


def on_locked_out(
    sender: object, request: HttpRequest, username: str, ip_address: str, **_: Any
) -> None:
    # django-axes sends this on the failure that reaches the limit and again for every
    # attempt refused while locked; only the first one (it counted a new failure) is a
    # new lock-out, so the trail gets one event per lock-out, not one per guess.
    if getattr(request, "axes_failures_since_start", None) is None:
        return
    lockout_record(username=username, ip_address=ip_address, path=request.path)
