"""Pages at fleet size (issue 13, DESIGN section 11 "pages"): with 1,000 agents in 50
teams, 1,000 pending approval requests, a history of runs and their steps and millions of
audit events, the overview, the approval queue (first page), an agent page and a run page
answer in p95 <= 100 ms server time.

Server time is measured in-process: Django's test Client calls the whole stack
(middleware, session, view, queries, template) without a network or a web server, on the
benchmark's Postgres. Two people: a supervisor of 5 teams and a compliance officer (sees
all). The floor, from the same run: the login page (a trivial page through the same
stack) and a bare `SELECT 1` round trip.

The fleet goes in with bulk_create (bench/fleet.py: the rows the query-count tests build,
at scale) and the events with bench/audit.py's loader (COPY, hashes chained, checkpoints
signed). Run: python -m bench.pages. BENCH_PAGES_EVENTS sets the number of events
(3,000,000; the issue asks for 10M, which took 557 s to load, COPY and indexes, on the
quiet 2-core machine: bench/README.md), BENCH_PAGES_HISTORY the finished runs per agent
(30), BENCH_PAGES_SAMPLES the samples a page (100); BENCH_PAGES_DB names the database
(`bench_fleet`), so two people on one machine keep theirs apart; BENCH_PAGES_REUSE=1
measures that database of an earlier run again without building it (it is kept after
each run).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

EVENTS = int(os.environ.get("BENCH_PAGES_EVENTS", "3000000"))
HISTORY = int(os.environ.get("BENCH_PAGES_HISTORY", "30"))
SAMPLES = int(os.environ.get("BENCH_PAGES_SAMPLES", "100"))
DB_NAME = os.environ.get("BENCH_PAGES_DB", "bench_fleet")
WORK = Path(tempfile.gettempdir()) / DB_NAME
BUDGET_P95 = 0.100
REUSE = os.environ.get("BENCH_PAGES_REUSE") == "1"
# bench.audit reads its number of rows when imported.
os.environ["BENCH_AUDIT_ROWS"] = str(EVENTS)

from bench.common import (  # noqa: E402
    audit_keys_in,
    measure_page,
    page_floors,
    pct,
    report,
    use_bench_database,
    use_kept_database,
)


def setup() -> str:
    audit_keys_in(WORK, fresh=True)
    return use_bench_database(DB_NAME)


def reuse() -> str:
    """Django on the kept database of an earlier run (BENCH_PAGES_REUSE=1)."""
    audit_keys_in(WORK, fresh=False)
    return use_kept_database(DB_NAME)


def people(teams: list[Any]) -> tuple[Any, Any]:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    from agents import roles

    roles.roles_ensure()
    users = get_user_model().objects
    supervisor = users.create_user("bench-supervisor")
    for team in teams[-5:]:
        roles.role_grant(user=supervisor, role=roles.SUPERVISOR, target=team)
    compliance = users.create_user("bench-compliance")
    compliance.groups.add(Group.objects.get(name=roles.COMPLIANCE))
    return supervisor, compliance


def main() -> None:
    print(f"pages benchmark: 1,000 agents in 50 teams, {EVENTS:,} events; uptime:")
    os.system("uptime")  # noqa: S605, S607  (the load beside the figures)
    from django.conf import settings

    url = reuse() if REUSE else setup()
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client

    from agents.models import Agent, Run
    from bench.audit import TEAMS, AgentRef, load
    from bench.fleet import build_fleet

    # Not setup_test_environment(): it instruments every template render for the test
    # Client (a signal and a copy of the context per included template), which is no part
    # of a server's time. Only the Client's host is allowed.
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
    if REUSE:
        print("  reusing the kept fleet and trail (BENCH_PAGES_REUSE=1)")
        users = get_user_model().objects
        supervisor = users.get(username="bench-supervisor")
        compliance = users.get(username="bench-compliance")
        agents = list(Agent.objects.filter(slug__startswith="fleet-").order_by("slug"))
    else:
        began = time.perf_counter()
        fleet = build_fleet(teams=50, per_team=20, history=HISTORY, steps=3, prefix="fleet")
        print(
            f"  fleet: {len(fleet.agents):,} agents, {fleet.runs:,} runs, "
            f"{fleet.actions:,} steps, {len(fleet.requests):,} pending requests "
            f"in {time.perf_counter() - began:.1f} s"
        )
        agents = fleet.agents
        supervisor, compliance = people(fleet.teams)
        # The trail's kinds of team (bench.audit.TEAMS: their tools and prompts) in turn;
        # the team ids are the fleet's.
        kinds = list(TEAMS)
        refs = [AgentRef(a.pk, a.slug, a.team_id, kinds[a.team_id % len(kinds)]) for a in agents]
        began = time.perf_counter()
        loaded = load(url, refs)
        print(f"  events: {loaded.rows:,} in {time.perf_counter() - began:.1f} s (COPY + indexes)")
        # VACUUM too: the fleet's build rewrites every run and step once (their times), and
        # a live database's autovacuum would have cleared the dead rows it leaves.
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")
    agent = agents[-1]  # in the supervisor's last team
    run = Run.objects.filter(agent=agent, status=Run.Status.SUCCEEDED).order_by("-pk").first()
    assert run is not None
    pages = {
        "overview": "/",
        "queue (first page)": "/approvals/",
        "agent": f"/agents/{agent.slug}/",
        "run": f"/runs/{run.pk}/",
    }
    # The floor: a bare round trip, and a trivial page through the same stack.
    trivial, _, _, _, _ = measure_page(Client(), "/login/", SAMPLES, sql_chars=90)
    floor, rows = page_floors(trivial, SAMPLES)
    slowest = []
    for who, user in (("supervisor (5 teams)", supervisor), ("compliance (all)", compliance)):
        client = Client()
        client.force_login(user)
        for name, page in pages.items():
            times, queries, sql_share, what, cpu = measure_page(client, page, SAMPLES, sql_chars=90)
            p95 = pct(times, 0.95)
            verdict = "met" if p95 <= BUDGET_P95 else "NOT MET"
            rows.append(
                (
                    f"{name}, {who}",
                    f"{pct(times, 0.5) * 1000:.1f} / {p95 * 1000:.1f} ms",
                    f"p95 {p95 / floor:.1f}x the login page; CPU p50 {cpu * 1000:.1f} ms; "
                    f"{queries} queries, SQL {sql_share:.0%}; budget 100 ms: {verdict}",
                )
            )
            slowest.append(f"  {name}, {who}: slowest query {what}")
    print("  p50 / p95 server time (test Client, in-process):")
    report(rows)
    print("\n".join(slowest))
    os.system("uptime")  # noqa: S605, S607


if __name__ == "__main__":
    main()
