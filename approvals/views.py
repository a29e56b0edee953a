from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import trigger_client_event

from agents.mcp.catalog import agent_tool
from agents.services import Conflict, ServiceError
from approvals import selectors
from approvals.forms import DecisionForm, QueueFilter, edited_arguments
from approvals.models import ApprovalRequest
from approvals.services import AlreadyDecided, approval_decide
from console.http import HtmxHttpRequest, signed_in

QUEUE_PAGE_SIZE = 50


@require_GET
@login_required
def queue(request: HtmxHttpRequest) -> HttpResponse:
    form = QueueFilter(request.GET, user=request.user)
    valid = form.is_valid()
    filters: dict[str, Any] = form.cleaned_data if valid else {}
    tab = filters.get("tab") or "pending"
    requests = selectors.queue(
        request.user,
        tab=tab,
        agent=filters.get("agent", ""),
        team=filters.get("team", ""),
        tool=filters.get("tool", ""),
        risk=filters.get("risk", ""),
        sort=filters.get("sort") or "risk",
    )
    # A filter that names nothing the person sees shows its message, not everything.
    page = Paginator(requests if valid else requests.none(), QUEUE_PAGE_SIZE).get_page(
        filters.get("page")
    )
    rows = list(page.object_list)
    context = {
        "form": form,
        "tab": tab,
        "requests": rows,
        "page": page,
        "query": _query_without_page(request),
        # The batch controls, only for someone who may decide one of the rows.
        "decidable": any(getattr(r, "decidable", False) for r in rows),
    }
    template = "approvals/queue.html#rows" if request.htmx else "approvals/queue.html"
    return render(request, template, context)


def _query_without_page(request: HtmxHttpRequest) -> str:
    query = request.GET.copy()
    query.pop("page", None)
    return query.urlencode()


@require_GET
@login_required
def badge(request: HtmxHttpRequest) -> HttpResponse:
    return render(
        request, "approvals/badge.html", {"pending_count": selectors.decidable_count(request.user)}
    )


@require_GET
@login_required
def detail(request: HtmxHttpRequest, request_id: int) -> HttpResponse:
    approval = selectors.request_for_user(request.user, request_id)
    return _render_request(request, approval)


def _render_request(
    request: HtmxHttpRequest,
    approval: ApprovalRequest,
    *,
    form: DecisionForm | None = None,
    error: str = "",
    status: int = 200,
) -> HttpResponse:
    context = {
        "ctx": selectors.request_context(request.user, approval),
        "form": form,
        "error": error,
        "schema": agent_tool(approval.agent_id, approval.tool).schema,
    }
    template = "approvals/request.html#panel" if request.htmx else "approvals/request.html"
    return render(request, template, context, status=status)


@require_POST
@login_required
def decide(request: HtmxHttpRequest, request_id: int) -> HttpResponse:
    form = DecisionForm(request.POST)
    valid = form.is_valid()
    edited = None
    if not valid or form.cleaned_data["edit"]:
        # The form drawn again, or edited arguments read against the tool's schema: both
        # need the request as the person may see it.
        approval = selectors.request_for_user(request.user, request_id)
        if not valid:
            _refuse_if_not_yours(request, approval)
            return _render_request(request, approval, form=form, status=400)
        schema = agent_tool(approval.agent_id, approval.tool).schema
        edited = edited_arguments(request.POST, schema)
    data = form.cleaned_data
    # Who may decide is checked once, by the service under its locks, before anything is
    # read for the answer: the run is released as soon as the decision commits. Only a
    # person the rule lets decide gets past it, and the rule's deciders all see the
    # request; a refusal is explained only to someone who may see the request (404
    # otherwise, as for an id that does not exist).
    try:
        decided = approval_decide(
            request_id=request_id,
            user=signed_in(request),
            verdict=data["verdict"],
            seen_args_hash=data["args_hash"],
            comment=data["comment"],
            edited_args=edited,
        )
    except ApprovalRequest.DoesNotExist:
        raise Http404("No such approval request.") from None
    except (ServiceError, PermissionDenied) as exc:
        approval = selectors.request_for_user(request.user, request_id)
        if isinstance(exc, PermissionDenied):
            raise
        if isinstance(exc, AlreadyDecided):
            return _render_request(request, approval, error=str(exc), status=409)
        status = 409 if isinstance(exc, Conflict) else 400
        return _render_request(request, approval, form=form, error=str(exc), status=status)
    if request.htmx:
        # The answer is the decision panel only, drawn from the request the decision
        # returned (as it wrote it): a person the rule let decide sees the request, so
        # it is not looked up again; the panel needs no steps.
        ctx = selectors.panel_context(request.user, decided)
        schema = agent_tool(decided.agent_id, decided.tool).schema if ctx.can_decide else {}
        answer = render(
            request,
            "approvals/request.html#panel",
            {"ctx": ctx, "form": None, "error": "", "schema": schema},
        )
        # The queue and the badge listen for it (hx-trigger "approvals-changed from:body").
        return trigger_client_event(answer, "approvals-changed")
    messages.success(request, f"Request {request_id}: {data['verdict']} recorded.")
    return redirect("approvals")


def _refuse_if_not_yours(request: HtmxHttpRequest, approval: ApprovalRequest) -> None:
    if not selectors.may_decide(request.user, approval):
        why = selectors.refusal(request.user, approval)
        if why == selectors.NOT_YOURS:
            raise PermissionDenied(why)  # others get the service's own answer and status


@require_POST
@login_required
def batch(request: HtmxHttpRequest) -> HttpResponse:
    """Decide several requests at once; each is its own decision, audited on its own."""
    verdict = request.POST.get("verdict", "")
    comment = request.POST.get("comment", "").strip()
    done, refused = 0, []
    for item in request.POST.getlist("selected"):
        request_id, _, seen = item.partition(":")
        if not request_id.isdigit():
            refused.append(f"{item!r}: not a request")
            continue
        approval = selectors.approvals_for_user(request.user).filter(pk=int(request_id)).first()
        if approval is None:
            refused.append(f"#{request_id}: no such request")
            continue
        try:
            approval_decide(
                request_id=approval.pk,
                user=signed_in(request),
                verdict=verdict,
                seen_args_hash=seen,
                comment=comment,
            )
            done += 1
        except (ServiceError, PermissionDenied, ValueError) as exc:
            refused.append(f"#{request_id}: {exc}")
    if done:
        messages.success(request, f"{done} request(s): {verdict} recorded.")
    for line in refused:
        messages.error(request, line)
    if not done and not refused:
        messages.error(request, "Select at least one request.")
    return redirect("approvals")
