"""Remote long poll benchmark (issues 12 and 13): from an approval decision to the remote
agent's long poll returning with it — the moment its tool starts — through the real path:
the console under uvicorn, Postgres, the Redis channel layer that carries the run's
doorbell (agents.stepwait), and the Python client (agents.client) waiting in
`wait_for_decision`.

One remote run; each of its steps is held for approval and the client long-polls it from a
thread. The steps are decided alternately two ways:

- through the approve POST (a logged-in supervisor, htmx request, CSRF token, to the same
  server), timed from the POST's start: DESIGN section 11's "approval -> resume", which
  issue 13 applies "the same from the remote API's long poll";
- through `approval_decide` (the approve POST's service) called here, timed from the call
  and from its COMMIT returning (the database connection's commit, timed): what the poll
  adds after the decision is durable.

Floor, from the same run: one Postgres INSERT+COMMIT, then a Redis LPUSH that another
process is blocked on in BLPOP (bench.approvals.floor, as approve -> resume). Beside it,
from the same client: a bare GET round trip to the same server (an unknown /api/ path,
answered JSON 404 without the database) and a GET of a decided step (the key check and
the read the poll does once woken).
Budget: approve POST -> poll returns p50 <= 15 ms, p99 <= 60 ms (issue 12's older
acceptance was the poll returning within 100 ms of the decision's commit).
Run: make bench, or python -m bench.remote_longpoll (BATON_AGENT_MODULES must include
bench.support; BENCH_LONGPOLL decisions, 200, half of each kind; BENCH_DB).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import urllib.parse
import urllib.request
from typing import Any

from bench.approvals import floor
from bench.common import (
    console_login,
    ms,
    pct,
    report,
    service_env,
    start_web,
    use_bench_database,
)

DECISIONS = int(os.environ.get("BENCH_LONGPOLL", "200"))
FLOOR_SAMPLES = 200
# The poll must be waiting on the server before the decision: a pause, not a measurement.
SETTLE = 0.3
P50_BUDGET = 0.015
P99_BUDGET = 0.060


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def timed_commits() -> list[int]:
    """Every COMMIT of this thread's connection, as the perf_counter_ns it returned at."""
    from django.db import connection

    connection.ensure_connection()
    commits: list[int] = []
    commit = getattr(connection, "_commit")  # noqa: B009  (Django's private COMMIT)

    def timed() -> None:
        commit()
        commits.append(time.perf_counter_ns())

    setattr(connection, "_commit", timed)  # noqa: B010
    return commits


def verdict(p50: float, p99: float) -> str:
    met = p50 <= P50_BUDGET and p99 <= P99_BUDGET
    return "met" if met else "NOT MET"


def main() -> None:
    db_url = use_bench_database(os.environ.get("BENCH_DB", "baton_bench_longpoll"))
    redis_url = os.environ["REDIS_URL"]
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    from django.contrib.auth import get_user_model

    from agents import roles
    from agents.client import Baton
    from agents.models import Agent
    from agents.remote import apikey_create
    from agents.services import agent_create, team_create, version_create, version_publish
    from approvals.models import ApprovalRequest
    from approvals.services import approval_decide

    roles.roles_ensure()
    team = team_create(slug="bench", name="Bench")
    agent = agent_create(
        slug="bench-remote", name="Bench remote", team=team, kind=Agent.Kind.REMOTE
    )
    version_publish(
        version=version_create(
            agent=agent,
            program="",
            policy={"rules": [{"tool": "bench.mark", "effect": "approve"}]},
        ),
        user=None,
        reason="benchmark set-up",
    )
    person = get_user_model().objects.create_user("bench-supervisor", password="bench-pass-123")
    roles.role_grant(user=person, role=roles.SUPERVISOR, target=team)
    key = apikey_create(agent=agent, name="bench", user=None)[1]

    env, _queue = service_env(db_url)
    port = free_port()
    server = start_web(env, port, "bench-longpoll-web.log")
    url = f"http://127.0.0.1:{port}"
    commits = timed_commits()
    since_post: list[float] = []  # approve POST starts -> poll returns
    answered: list[float] = []  # the POST's own answer
    since_commit: list[float] = []  # approval_decide's COMMIT returns -> poll returns
    since_call: list[float] = []  # approval_decide called -> poll returns
    bare: list[float] = []
    step_reads: list[float] = []
    try:
        opener, token = console_login(url, "bench-supervisor", "bench-pass-123")
        with Baton(url, key) as agent_client, Baton(url, key) as poller:
            run = agent_client.start_run({"bench": "longpoll"})
            returned: list[tuple[int, Any]] = []

            def poll(seq: int) -> None:
                step = poller.wait_for_decision(run.id, seq, timeout=30)
                returned.append((time.perf_counter_ns(), step))

            for seq in range(1, DECISIONS + 1):
                held = agent_client.submit_step(run.id, seq, "bench.mark", {"token": f"t{seq}"})
                assert held.decision == "pending", held
                returned.clear()
                waiting = threading.Thread(target=poll, args=(seq,))
                waiting.start()
                time.sleep(SETTLE)
                request = ApprovalRequest.objects.get(run=run.id, action__seq=seq)
                if seq % 2:
                    form = {
                        "verdict": "approve",
                        "args_hash": request.args_hash,
                        "csrfmiddlewaretoken": token(),
                    }
                    post = urllib.request.Request(
                        f"{url}/approvals/{request.pk}/decide",
                        data=urllib.parse.urlencode(form).encode(),
                        headers={"HX-Request": "true"},
                    )
                    started = time.perf_counter_ns()
                    opener.open(post).read()
                    answered.append((time.perf_counter_ns() - started) / 1e9)
                else:
                    started = time.perf_counter_ns()
                    approval_decide(
                        request_id=request.pk,
                        user=person,
                        verdict="approve",
                        seen_args_hash=request.args_hash,
                    )
                    committed = commits[-1]
                waiting.join(30)
                at, step = returned[0]
                assert step.decision == "allow", step
                if seq % 2:
                    since_post.append((at - started) / 1e9)
                else:
                    since_commit.append((at - committed) / 1e9)
                    since_call.append((at - started) / 1e9)
                agent_client.report(run.id, seq, ok=True, result={"token": f"t{seq}"})

            http = poller._http
            for _ in range(FLOOR_SAMPLES):
                began = time.perf_counter_ns()
                http.get(f"{url}/api/bench-floor")
                bare.append((time.perf_counter_ns() - began) / 1e9)
                began = time.perf_counter_ns()
                poller.step(run.id, 1)
                step_reads.append((time.perf_counter_ns() - began) / 1e9)
            agent_client.finish(run.id, output={"decisions": DECISIONS})
    finally:
        server.terminate()
        server.wait(10)

    base_floor = floor(db_url, redis_url)
    f50, f99 = pct(base_floor, 0.5), pct(base_floor, 0.99)
    b50, b99 = pct(bare, 0.5), pct(bare, 0.99)
    s50, s99 = pct(step_reads, 0.5), pct(step_reads, 0.99)
    p50, p99 = pct(since_post, 0.5), pct(since_post, 0.99)
    c50, c99 = pct(since_commit, 0.5), pct(since_commit, 0.99)
    d50, d99 = pct(since_call, 0.5), pct(since_call, 0.99)
    print(
        f"remote long poll benchmark: {DECISIONS} decisions, one at a time "
        f"({len(since_post)} by the approve POST, {len(since_call)} by approval_decide)"
    )
    report(
        [
            ("floor: commit + LPUSH->BLPOP p50", ms(f50), f"p99 {ms(f99)}"),
            ("floor: bare GET round trip p50", ms(b50), f"p99 {ms(b99)}"),
            ("floor: GET of a decided step p50", ms(s50), f"p99 {ms(s99)}"),
            (
                "approve POST -> poll returns p50",
                ms(p50),
                f"= {p50 / f50:.1f}x floor (budget 15 ms: {p50 / P50_BUDGET:.2f}x)",
            ),
            (
                "approve POST -> poll returns p99",
                ms(p99),
                f"= {p99 / f99:.1f}x floor p99 (budget 60 ms: {p99 / P99_BUDGET:.2f}x) "
                f"-> {verdict(p50, p99)}",
            ),
            ("of which: the POST's answer p50", ms(pct(answered, 0.5)), ""),
            (
                "decide call starts -> poll returns p50",
                ms(d50),
                f"= {d50 / f50:.1f}x floor (budget 15 ms: {d50 / P50_BUDGET:.2f}x)",
            ),
            (
                "decide call starts -> poll returns p99",
                ms(d99),
                f"= {d99 / f99:.1f}x floor p99 (budget 60 ms: {d99 / P99_BUDGET:.2f}x) "
                f"-> {verdict(d50, d99)}",
            ),
            (
                "decision commit -> poll returns p50",
                ms(c50),
                f"= {c50 / f50:.1f}x floor, {c50 / b50:.1f}x bare GET, {c50 / s50:.1f}x step GET",
            ),
            (
                "decision commit -> poll returns p99",
                ms(c99),
                f"= {c99 / f99:.1f}x floor p99, {c99 / b99:.1f}x bare GET p99",
            ),
            ("worst approve POST -> poll returns", ms(max(since_post)), ""),
        ]
    )


if __name__ == "__main__":
    main()
