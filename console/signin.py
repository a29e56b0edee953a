"""Password checks and the lock-out they count toward (django-axes): a leaf module, so the
kill switch's password re-confirmation (agents.switch_views) and the lock-out page
(console.security) read the same rule and the same words."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import authenticate
from django.http import HttpRequest

LOCKED_OUT = (
    "Too many failed password attempts: signing in and confirming your password are "
    "locked for this account for {minutes} minutes. Try again later, or ask an "
    "administrator to lift the lock."
)


def locked_out_message() -> str:
    minutes = max(1, round(settings.AXES_COOLOFF_TIME.total_seconds() / 60))
    return LOCKED_OUT.format(minutes=minutes)


def password_confirm(request: HttpRequest, password: str) -> bool:
    """Whether `password` is the signed-in person's own, counted by django-axes like a
    login: a locked-out person is refused even with the right password."""
    user = authenticate(request, username=request.user.get_username(), password=password)
    return user is not None and user.pk == request.user.pk


def is_locked_out(request: HttpRequest) -> bool:
    return bool(getattr(request, "axes_locked_out", False))
