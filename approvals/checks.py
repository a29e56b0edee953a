"""Start-up checks for the approvals app: a webhook secret that cannot sign is found when
the console starts, not when the first request is held."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, register

from approvals.notifications import secret_key


@register()
def webhook_secret_usable(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    secret: str = getattr(settings, "BATON_WEBHOOK_SECRET", "") or ""
    if not secret:
        return []
    try:
        secret_key(secret)
    except ValueError as exc:
        return [Error(str(exc), id="approvals.E001")]
    return []
