"""Remote long poll benchmark (issue 12): from an approval decision's commit to the remote
agent's long poll returning with it, through the real path — the console under uvicorn,
Postgres, the Redis channel layer that carries the run's doorbell (agents.stepwait), and
the Python client (agents.client) waiting in `wait_for_decision`.

One remote run; each of its steps is held for approval, the client long-polls it from a
thread, and the decision is taken here through `approval_decide` (the approval screen's
service). The commit instant is taken when the decision's COMMIT returns (the database
connection's commit, timed); the poll's return when `wait_for_decision` returns.

Floors, from the same run and the same client: a bare GET round trip to the same server
(an unknown /api/ path, answered JSON 404 without the database), and a GET of a decided
step (the key check and the read the poll does once woken).
Acceptance: the poll returns within 100 ms of the decision's commit.
Run: python -m bench.remote_longpoll   (BATON_AGENT_MODULES must include bench.support)
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

from bench.common import ms, pct, report, service_env, start_web, use_bench_database

DECISIONS = int(os.environ.get("BENCH_LONGPOLL", "50"))
FLOOR_SAMPLES = 200
# The poll must be waiting on the server before the decision: a pause, not a measurement.
SETTLE = 0.3


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


def main() -> None:
    db_url = use_bench_database(os.environ.get("BENCH_DB", "baton_bench_longpoll"))
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
    person = get_user_model().objects.create_user("bench-supervisor")
    roles.role_grant(user=person, role=roles.SUPERVISOR, target=team)
    key = apikey_create(agent=agent, name="bench", user=None)[1]

    env, _queue = service_env(db_url)
    port = free_port()
    server = start_web(env, port, "bench-longpoll-web.log")
    url = f"http://127.0.0.1:{port}"
    commits = timed_commits()
    latencies: list[float] = []
    since_call: list[float] = []
    bare: list[float] = []
    step_reads: list[float] = []
    try:
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
                called = time.perf_counter_ns()
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
                latencies.append((at - committed) / 1e9)
                since_call.append((at - called) / 1e9)
                agent_client.report(run.id, seq, ok=True, result={"token": f"t{seq}"})

            http = poller._http
            for _ in range(FLOOR_SAMPLES):
                started = time.perf_counter_ns()
                http.get(f"{url}/api/bench-floor")
                bare.append((time.perf_counter_ns() - started) / 1e9)
                started = time.perf_counter_ns()
                poller.step(run.id, 1)
                step_reads.append((time.perf_counter_ns() - started) / 1e9)
            agent_client.finish(run.id, output={"decisions": DECISIONS})
    finally:
        server.terminate()
        server.wait(10)

    b50, b99 = pct(bare, 0.5), pct(bare, 0.99)
    s50, s99 = pct(step_reads, 0.5), pct(step_reads, 0.99)
    l50, l99 = pct(latencies, 0.5), pct(latencies, 0.99)
    print(f"remote long poll benchmark: {DECISIONS} decisions, one at a time")
    report(
        [
            ("floor: bare GET round trip p50", ms(b50), f"p99 {ms(b99)}"),
            ("floor: GET of a decided step p50", ms(s50), f"p99 {ms(s99)}"),
            (
                "decision commit -> poll returns p50",
                ms(l50),
                f"= {l50 / b50:.1f}x bare GET, {l50 / s50:.1f}x step GET (acceptance 100 ms)",
            ),
            (
                "decision commit -> poll returns p99",
                ms(l99),
                f"= {l99 / b99:.1f}x bare GET p99, {l99 / s99:.1f}x step GET p99",
            ),
            ("decide call starts -> poll returns p50", ms(pct(since_call, 0.5)), ""),
            ("decide call starts -> poll returns p99", ms(pct(since_call, 0.99)), ""),
            ("worst commit -> poll returns", ms(max(latencies)), ""),
        ]
    )


if __name__ == "__main__":
    main()
