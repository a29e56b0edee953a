from __future__ import annotations

from typing import Any

from django import template

from audit.selectors import can_browse

register = template.Library()


@register.simple_tag
def audit_visible(user: Any) -> bool:
    """Whether to show the Audit link: the page itself checks again on the server."""
    return can_browse(user)
