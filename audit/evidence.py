"""Views that produce evidence: the export, the public key and the offline verifier to
check it with, checkpoints and verification on demand, and the integrity badge."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.handlers.asgi import ASGIRequest
from django.db import connection, transaction
from django.db.models import Q
from django.http import HttpRequest, HttpResponse, HttpResponseBase, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from audit.chain import format_time
from audit.export import csv_chunks, export_plan, jsonl_chunks
from audit.filters import AuditFilter
from audit.selectors import audit_scope, filter_q
from audit.sequencer import sequencing_lag
from audit.services import Actor, audit_flush, audit_record
from audit.signing import (
    NO_SIGNING_KEY,
    SigningKeyError,
    checkpoint_sign,
    public_pem,
    signing_key,
)
from audit.verbs import Verb
from audit.verify import badge_state
from console.http import signed_in

FORMATS = {"jsonl": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}
BAD_FORMAT = "Export as jsonl or csv."
EXPORT_FORBIDDEN = "Exporting audit evidence needs the export permission."
SIGNING_FORBIDDEN = "Signing checkpoints and starting verification needs its own permission."
VERIFIER = Path(__file__).with_name("offline.py")
# The same check in JavaScript, and the format both were written from (for a third party's).
VERIFIER_JS = Path(__file__).with_name("verify.js")
FORMAT_DOC = Path(__file__).with_name("FORMAT.md")


def integrity() -> dict[str, Any]:
    """What the integrity badge shows: the last proven verification (audit.verify decides
    what may be shown) and the last checkpoint."""
    shown = badge_state()
    try:
        signing = signing_key() is not None
    except SigningKeyError:
        signing = False  # the badge says no key signs; verification names the error
    lag = sequencing_lag()
    return {
        "state": shown.state,
        "verification": shown.verification,
        "note": shown.note,
        "checkpoint": shown.checkpoint,
        "signing": signing,
        # Events committed and not chained yet (audit.sequencer): how many, for how long.
        "waiting": lag.waiting,
        "waiting_seconds": round(lag.age().total_seconds(), 1),
        "waiting_late": lag.age().total_seconds() > settings.BATON_AUDIT_SEQUENCER_LATE_SECONDS,
    }


def _allowed(request: HttpRequest, perm: str, refusal: str) -> Any:
    user = signed_in(request)
    if not user.has_perm(perm):
        raise PermissionDenied(refusal)
    return user


def _visible(user: Any) -> Q:
    scope = audit_scope(user)
    if scope.nothing:
        raise PermissionDenied
    return scope.condition()


# A POST with its CSRF token: taking an export writes to the trail, so another site must
# not be able to make a signed-in person's browser take one.
@require_POST
@login_required
def export(request: HttpRequest) -> HttpResponseBase:
    user = _allowed(request, "audit.export_auditevent", EXPORT_FORBIDDEN)
    visible = _visible(user)
    fmt = request.POST.get("format", "jsonl")
    form = AuditFilter(request.POST, user=user)
    if fmt not in FORMATS or not form.is_valid():
        problems = [BAD_FORMAT] if fmt not in FORMATS else []
        problems += [str(e) for errors in form.errors.values() for e in errors]
        return HttpResponse("\n".join(problems) + "\n", status=400, content_type="text/plain")
    cleaned = {k: v for k, v in form.cleaned_data.items() if k != "before"}
    filters = {k: v for k, v in request.POST.items() if k in form.fields and k != "before" and v}
    with transaction.atomic():
        # The export is evidence of its own: who took what, recorded before it is taken.
        audit_record(
            verb=Verb.AUDIT_EXPORTED,
            actor=Actor.user(user),
            subject_type="export",
            subject_id=format_time(timezone.now()),
            payload={"filter": filters, "format": fmt},
        )
    # Its own event chained (a deployment's sequencer may not have come to it yet), then
    # signed, so the export ends on a signed checkpoint with its own event included.
    seq = audit_flush()
    checkpoint_sign()
    matched = visible & filter_q(cleaned)
    plan = export_plan(matched, up_to=seq)
    chunks = (jsonl_chunks if fmt == "jsonl" else csv_chunks)(
        plan,
        matched,
        by=user.get_username(),
        filters=filters,
        generated_at=format_time(timezone.now()),
    )
    content: Iterator[bytes] | AsyncIterator[bytes] = chunks
    if isinstance(request, ASGIRequest):
        content = _from_own_thread(chunks)
    response = StreamingHttpResponse(content, content_type=FORMATS[fmt])
    name = f"baton-audit-{plan.anchor_seq + 1}-{plan.to_seq}.{fmt}"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    response["Cache-Control"] = "no-store"
    return response


def _from_own_thread(chunks: Generator[bytes, None, None]) -> AsyncIterator[bytes]:
    """Serve a database-reading generator under ASGI without loading it into memory: it
    runs in a thread of its own, with a connection of its own, one chunk at a time."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="baton-export")

    def close() -> None:
        chunks.close()
        connection.close()

    async def stream() -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        try:
            while (chunk := await loop.run_in_executor(executor, next, chunks, None)) is not None:
                yield chunk
        finally:
            await loop.run_in_executor(executor, close)
            executor.shutdown(wait=False)

    return stream()


@require_GET
@login_required
def public_key(request: HttpRequest) -> HttpResponse:
    private = signing_key()
    if private is None:
        return HttpResponse(NO_SIGNING_KEY + "\n", status=404, content_type="text/plain")
    response = HttpResponse(public_pem(private.public_key()), content_type="application/x-pem-file")
    response["Content-Disposition"] = 'attachment; filename="baton-audit-public-key.pem"'
    return response


def _attachment(path: Path, content_type: str, filename: str) -> HttpResponse:
    response = HttpResponse(path.read_bytes(), content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@require_GET
@login_required
def verifier(request: HttpRequest) -> HttpResponse:
    return _attachment(VERIFIER, "text/x-python; charset=utf-8", "baton_verify_export.py")


@require_GET
@login_required
def verifier_js(request: HttpRequest) -> HttpResponse:
    return _attachment(VERIFIER_JS, "text/javascript; charset=utf-8", "baton_verify_export.js")


@require_GET
@login_required
def format_doc(request: HttpRequest) -> HttpResponse:
    return HttpResponse(FORMAT_DOC.read_bytes(), content_type="text/markdown; charset=utf-8")


@require_POST
@login_required
def checkpoint(request: HttpRequest) -> HttpResponse:
    _allowed(request, "audit.sign_checkpoint", SIGNING_FORBIDDEN)
    signed = checkpoint_sign()
    if signed is None:
        messages.error(request, NO_SIGNING_KEY)
    else:
        messages.success(request, f"Checkpoint #{signed.seq} signed at {signed.signed_at}.")
    return redirect("audit")


@require_POST
@login_required
def verify(request: HttpRequest) -> HttpResponse:
    from audit.tasks import verify as verify_task

    _allowed(request, "audit.sign_checkpoint", SIGNING_FORBIDDEN)
    transaction.on_commit(lambda: verify_task.delay(full=True))  # the whole trail
    messages.info(
        request, "Verification queued; the badge shows its outcome once a worker has run it."
    )
    return redirect("audit")


@require_GET
@login_required
def badge(request: HttpRequest) -> HttpResponse:
    _visible(signed_in(request))
    return render(request, "audit/badge.html", {"integrity": integrity()})
