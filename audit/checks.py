"""Deployment checks for the audit trail: production signs its checkpoints."""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Tags, Warning, register

from audit.signing import NO_SIGNING_KEY, SigningKeyError, signing_key


@register(Tags.security, deploy=True)
def signing_key_configured(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    try:
        key = signing_key()
    except SigningKeyError as exc:
        return [Warning(str(exc), id="audit.W002")]
    if key is None:
        return [Warning(NO_SIGNING_KEY, id="audit.W001")]
    return []
