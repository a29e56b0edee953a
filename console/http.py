"""What a view knows about its request: a leaf module every app's views may import."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.http import HttpRequest
from django_htmx.middleware import HtmxDetails


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


def signed_in(request: HttpRequest) -> User:
    """The person behind a request that login_required has let through."""
    assert isinstance(request.user, User)
    return request.user
