"""Approve -> resume benchmark (DESIGN section 11): from the approve POST to the approved
tool starting in a worker, through the real path — the console under uvicorn, Postgres,
the Redis broker and a Celery worker process.

Floor, from the same run: one Postgres INSERT+COMMIT, then a Redis LPUSH that another
process is blocked on in BLPOP. Budget: p50 <= 15 ms, p99 <= 60 ms.
Run: make bench
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import os
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, cast

from bench.common import (
    console_login,
    ms,
    pct,
    report,
    service_env,
    start_web,
    start_worker,
    use_bench_database,
)

if TYPE_CHECKING:
    import redis

RUNS = int(os.environ.get("BENCH_APPROVALS", "150"))
ROOT = Path(__file__).resolve().parent.parent


def popped(client: redis.Redis, key: str, timeout: float = 0) -> bytes:
    """BLPOP's value (redis-py types a sync client's reply as maybe awaitable)."""
    reply = cast("list[bytes] | None", client.blpop([key], timeout=timeout))
    if reply is None:
        raise RuntimeError(f"nothing arrived on {key} within {timeout}s")
    return reply[1]


def _floor_receiver(url: str, ready: multiprocessing.synchronize.Event) -> None:
    import redis

    client = redis.Redis.from_url(url)
    ready.set()
    while True:
        raw = popped(client, "bench:floor")
        if raw == b"stop":
            return
        client.lpush("bench:floor:seen", f"{raw.decode()} {time.perf_counter_ns()}")


def floor(db_url: str, redis_url: str, samples: int = 300) -> list[float]:
    import psycopg
    import redis

    ready = multiprocessing.Event()
    receiver = multiprocessing.Process(target=_floor_receiver, args=(redis_url, ready))
    receiver.start()
    ready.wait(10)
    client = redis.Redis.from_url(redis_url)
    con = psycopg.connect(db_url, autocommit=True)
    con.execute("CREATE TABLE IF NOT EXISTS bench_floor (id bigserial PRIMARY KEY, v text)")
    timings = []
    for _ in range(samples):
        started = time.perf_counter_ns()
        con.execute("INSERT INTO bench_floor (v) VALUES ('x')")
        client.lpush("bench:floor", str(started))
        raw = popped(client, "bench:floor:seen")
        sent, seen = map(int, raw.split())
        timings.append((seen - sent) / 1e9)
    client.lpush("bench:floor", "stop")
    receiver.join(5)
    return timings


def main() -> None:
    db_url = use_bench_database(os.environ.get("BENCH_DB", "baton_bench_approvals"))
    redis_url = os.environ["REDIS_URL"]
    import redis
    from django.contrib.auth import get_user_model

    from agents import roles
    from agents.models import Run
    from agents.services import (
        agent_create,
        run_start,
        team_create,
        version_create,
        version_publish,
    )
    from approvals.models import ApprovalRequest

    client = redis.Redis.from_url(redis_url)
    client.delete("bench:started", "bench:floor", "bench:floor:seen")
    roles.roles_ensure()
    team = team_create(slug="bench", name="Bench")
    agent = agent_create(slug="bench-approvals", name="Bench", team=team)
    version_publish(
        version=version_create(
            agent=agent,
            program="bench.support.held_mark",
            policy={"rules": [{"tool": "bench.mark", "effect": "approve"}]},
        ),
        user=None,
        reason="benchmark set-up",
    )
    agent.refresh_from_db()
    person = get_user_model().objects.create_user("bench-supervisor", password="bench-pass-123")
    roles.role_grant(user=person, role=roles.SUPERVISOR, target=team)

    env, queue = service_env(db_url)
    worker = start_worker(env, queue, 4, "bench-worker.log")
    port = int(os.environ.get("BENCH_PORT", "8765"))
    server = start_web(env, port, "bench-web.log")
    try:
        from celery import current_app

        current_app.conf.task_default_queue = queue
        runs = [run_start(agent=agent, input={"token": f"t{i}"}) for i in range(RUNS)]
        deadline = time.monotonic() + 120
        while ApprovalRequest.objects.filter(status="pending").count() < RUNS:
            if time.monotonic() > deadline:
                raise RuntimeError("runs were not all held in time")
            time.sleep(0.2)

        base = f"http://127.0.0.1:{port}"
        opener, token = console_login(base, "bench-supervisor", "bench-pass-123")

        timings, answered = [], []
        for run in runs:
            request = ApprovalRequest.objects.get(run=run)
            body = urllib.parse.urlencode(
                {
                    "verdict": "approve",
                    "args_hash": request.args_hash,
                    "csrfmiddlewaretoken": token(),
                }
            ).encode()
            started = time.perf_counter_ns()
            opener.open(
                urllib.request.Request(
                    f"{base}/approvals/{request.pk}/decide",
                    data=body,
                    headers={"HX-Request": "true"},
                )
            )
            answered.append((time.perf_counter_ns() - started) / 1e9)
            raw = popped(client, "bench:started", timeout=30)
            mark_token, at = raw.decode().split()
            assert mark_token == run.input["token"], (mark_token, run.input)
            timings.append((int(at) - started) / 1e9)
        done = Run.objects.filter(status="succeeded").count()
    finally:
        server.terminate()
        worker.terminate()
        server.wait(10)
        worker.wait(10)

    base_floor = floor(db_url, redis_url)
    f50, f99 = pct(base_floor, 0.5), pct(base_floor, 0.99)
    a50, a99 = pct(timings, 0.5), pct(timings, 0.99)
    print(f"approve -> resume benchmark: {RUNS} approvals, one at a time ({done} runs done)")
    report(
        [
            ("floor: commit + LPUSH->BLPOP p50", ms(f50), f"p99 {ms(f99)}"),
            (
                "approve POST -> tool starts p50",
                ms(a50),
                f"= {a50 / f50:.1f}x floor (budget 15 ms)",
            ),
            ("of which: the POST's answer p50", ms(pct(answered, 0.5)), ""),
            (
                "approve POST -> tool starts p99",
                ms(a99),
                f"= {a99 / f99:.1f}x floor p99 (budget 60 ms)",
            ),
        ]
    )


if __name__ == "__main__":
    main()
