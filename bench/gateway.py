"""Gateway benchmark (DESIGN section 11): what a governed step costs over a bare call,
durable journal and audit included, beside one Postgres INSERT+COMMIT from the same run.

Budget: p50 added cost <= 2x the floor; >= 1,000 governed steps/s.
Run: make bench   (Postgres and Redis from DATABASE_URL / REDIS_URL)
"""

from __future__ import annotations

import multiprocessing
import os
import time
from typing import TYPE_CHECKING

from bench.common import ms, pct, report, use_bench_database

if TYPE_CHECKING:
    from agents.models import Agent

STEPS = int(os.environ.get("BENCH_STEPS", "2000"))
FLOOR_SAMPLES = 3000


def floor_insert_commit(url: str) -> list[float]:
    import psycopg

    con = psycopg.connect(url, autocommit=True)
    con.execute("CREATE TABLE IF NOT EXISTS bench_floor (id bigserial PRIMARY KEY, v text)")
    timings = []
    for _ in range(FLOOR_SAMPLES):
        started = time.perf_counter()
        con.execute("INSERT INTO bench_floor (v) VALUES ('x')")
        timings.append(time.perf_counter() - started)
    con.close()
    return timings


def bare_calls() -> list[float]:
    from agents.registry import ToolCall, get_tool

    noop = get_tool("bench.noop")
    timings = []
    for i in range(STEPS):
        started = time.perf_counter()
        noop.fn(ToolCall({"i": i}, "k", 0, "bench"))
        timings.append(time.perf_counter() - started)
    return timings


def agent() -> Agent:
    from agents.models import Agent, Team
    from agents.services import agent_create, version_create, version_publish

    team, _ = Team.objects.get_or_create(slug="bench", defaults={"name": "Bench"})
    found = Agent.objects.filter(slug="bench").first()
    if found:
        return found
    made = agent_create(slug="bench", name="Bench", team=team)
    version = version_create(
        agent=made,
        program="bench.support.timed_steps",
        policy={"rules": [{"tool": "bench.*", "effect": "allow"}]},
    )
    version_publish(version=version, user=None, reason="benchmark set-up")
    made.refresh_from_db()
    return made


def governed_run(steps: int) -> tuple[list[float], float]:
    from agents.models import Run
    from agents.runtime import execute_run
    from agents.services import run_start

    run = run_start(agent=agent(), input={"steps": steps})
    started = time.perf_counter()
    execute_run(run.pk)
    elapsed = time.perf_counter() - started
    run.refresh_from_db()
    assert run.status == Run.Status.SUCCEEDED, run.error
    assert run.output is not None
    return run.output["timings"], elapsed


def _worker(steps: int, out: multiprocessing.Queue) -> None:
    from django.db import connections

    connections.close_all()
    out.put(governed_run(steps)[1])


def main() -> None:
    url = use_bench_database()
    print(f"gateway benchmark: {STEPS} governed steps, floor from {FLOOR_SAMPLES} raw inserts")
    floor = floor_insert_commit(url)
    bare = bare_calls()
    governed_run(200)  # warm caches and connections
    governed, elapsed = governed_run(STEPS)

    queue: multiprocessing.Queue = multiprocessing.Queue()
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_worker, args=(STEPS, queue)) for _ in range(2)]
    wall = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    wall = time.perf_counter() - wall
    parallel_rate = 2 * STEPS / wall

    f50, f99 = pct(floor, 0.5), pct(floor, 0.99)
    b50 = pct(bare, 0.5)
    g50, g99 = pct(governed, 0.5), pct(governed, 0.99)
    added50, added99 = g50 - b50, g99 - b50
    report(
        [
            ("floor: INSERT+COMMIT p50", ms(f50), f"p99 {ms(f99)}"),
            ("bare tool call p50", ms(b50), ""),
            ("governed step p50", ms(g50), f"p99 {ms(g99)}"),
            (
                "added by the gateway p50",
                ms(added50),
                f"= {added50 / f50:.1f}x floor (budget <= 2.0x)",
            ),
            ("added by the gateway p99", ms(added99), f"= {added99 / f99:.1f}x floor p99"),
            ("governed steps/s, 1 process", f"{STEPS / elapsed:,.0f}", "(budget >= 1,000)"),
            ("governed steps/s, 2 processes", f"{parallel_rate:,.0f}", "(budget >= 1,000)"),
        ]
    )


if __name__ == "__main__":
    main()
