from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.views.decorators.http import require_GET

from console import frames

BAD_RANGE = "after and upto are event sequence numbers, after < upto"


@require_GET
@login_required
def live_events(request: HttpRequest) -> HttpResponse:
    """What a page missed between two sequence numbers, as the socket would have sent it
    (the browser asks after a gap or a reconnect)."""
    try:
        after = int(request.GET.get("after", ""))
        upto = int(request.GET["upto"]) if request.GET.get("upto") else None
    except ValueError:
        return HttpResponseBadRequest(BAD_RANGE)
    if after < 0 or (upto is not None and upto < after):
        return HttpResponseBadRequest(BAD_RANGE)
    events = frames.visible_events(request.user, after, upto)
    html, _ = frames.render_frames(
        request.user, events, after, request.COOKIES.get("csrftoken", "")
    )
    return HttpResponse(html)
