"""The console's URLs plus one floor for the benchmarks: a bare Django JSON view (no
database, no authentication), served by the same process and middleware as the API.
Mounted only through bench.settings; no production URL."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.views.decorators.http import require_GET

from console.urls import urlpatterns as console_urlpatterns

FLOOR_PATH = "bench/json"


@require_GET
def bare_json(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


urlpatterns = [path(FLOOR_PATH, bare_json), *console_urlpatterns]
