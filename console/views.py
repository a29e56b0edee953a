from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import render
from django.views.decorators.http import require_GET

from agents import alerts
from agents import selectors as agent_selectors
from agents.forms import OverviewFilter
from console import frames
from console.http import HtmxHttpRequest

BAD_RANGE = "after and upto are event sequence numbers, after < upto"
BAD_AGENTS = (
    f"agents is all (the cards of one page of the overview), or at most "
    f"{agent_selectors.CARDS_PAGE_SIZE} agent ids separated by commas"
)
NO_SUCH_TEAM = "None of your agents is in a team {slug!r}."


@require_GET
@login_required
def overview(request: HtmxHttpRequest) -> HttpResponse:
    """The first page: the person's teams summed up, the agents that need attention, one
    page of cards (searched by name, team or state), the approvals badge and the live
    audit stream (a console page, as it reads every app below it)."""
    form = OverviewFilter(request.GET)
    valid = form.is_valid()
    filters = form.cleaned_data if valid else {}
    context = agent_selectors.overview(
        request.user,
        q=filters.get("q", ""),
        team=filters.get("team", ""),
        state=filters.get("state", ""),
        page=filters.get("page") or 1,
    )
    context["form"] = form
    team = filters.get("team", "")
    if team and all(t.slug != team for t in context["teams"]):
        form.add_error("team", NO_SUCH_TEAM.format(slug=team))
    context["query"] = _query_without_page(request)
    context["recent_events"] = frames.recent_events(request.user)
    context["firing_alerts"] = alerts.firing_for_user(request.user)
    template = "agents/overview.html"
    if request.htmx:
        template += "#fleet" if request.htmx.target == "fleet" else "#live"
    return render(request, template, context)


def _query_without_page(request: HttpRequest) -> str:
    query = request.GET.copy()
    query.pop("page", None)
    return query.urlencode()


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
    html, _ = frames.render_frames(events, after)
    return HttpResponse(html)


@require_GET
@login_required
def live_parts(request: HttpRequest) -> HttpResponse:
    """The parts of a page a live frame said changed that differ per person — the agents'
    cards (with the stop forms this person may use) and the switch banners (with the
    release forms) — fetched by the page itself, out-of-band swaps as a frame's were.
    Never more cards than one page of the overview holds: the page names the cards it
    shows (or asks for all of its page), whatever the size of the fleet."""
    wanted = request.GET.get("agents", "")
    if wanted == "all":
        # Every card a page shows is at most one page of the overview: that page (the
        # overview's own filter and page number), not every agent the person sees.
        form = OverviewFilter(request.GET)
        if not form.is_valid():
            return HttpResponseBadRequest(BAD_AGENTS)
        filters = form.cleaned_data
        agents = set(
            agent_selectors.overview_card_ids(
                request.user,
                q=filters["q"],
                team=filters["team"],
                state=filters["state"],
                page=filters["page"] or 1,
            )
        )
    else:
        try:
            agents = {int(a) for a in wanted.split(",") if a}
        except ValueError:
            return HttpResponseBadRequest(BAD_AGENTS)
        if len(agents) > agent_selectors.CARDS_PAGE_SIZE:
            return HttpResponseBadRequest(BAD_AGENTS)
    context = frames.parts_context(
        request.user,
        agents,
        cards=bool(wanted),
        switches=request.GET.get("switches") == "1",
        alerts=request.GET.get("alerts") == "1",
    )
    return render(request, "console/parts.html", context)
