"""Gateway benchmark (DESIGN section 11): what a governed step costs over a bare call,
durable journal and audit included, beside its floor from the same run.

A governed step needs two durable writes (admission and outcome), so its floor is two
raw INSERT+COMMITs. Budget: added cost p50 <= 2x that floor; with 4 processes, governed
steps/s >= 1/4 of the raw INSERT+COMMITs/s 4 processes reach in the same run; 1 -> 2
processes >= 1.6x. Audit events are chained by the sequencer (a process of its own, as
in a deployment: bench.common starts it); the sequencing lag is sampled during the runs.
Run: make bench   (Postgres and Redis from DATABASE_URL / REDIS_URL)
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from bench.common import chained_all, ms, pct, report, use_bench_database

if TYPE_CHECKING:
    from agents.models import Agent

STEPS = int(os.environ.get("BENCH_STEPS", "2000"))
PROCESSES = [int(n) for n in os.environ.get("BENCH_PROCESSES", "1,2,4").split(",")]
FLOOR_SAMPLES = 3000


def floor_insert_commit(url: str, samples: int = FLOOR_SAMPLES, pairs: bool = False) -> list[float]:
    """Raw INSERT+COMMITs (autocommit) on one connection; with `pairs`, the time of two
    in a row: a governed step's floor."""
    import psycopg

    con = psycopg.connect(url, autocommit=True)
    con.execute("CREATE TABLE IF NOT EXISTS bench_floor (id bigserial PRIMARY KEY, v text)")
    timings = []
    for _ in range(samples):
        started = time.perf_counter()
        con.execute("INSERT INTO bench_floor (v) VALUES ('x')")
        if pairs:
            con.execute("INSERT INTO bench_floor (v) VALUES ('y')")
        timings.append(time.perf_counter() - started)
    con.close()
    return timings


def _floor_worker(url: str, samples: int, out: multiprocessing.Queue) -> None:
    floor_insert_commit(url, samples)
    out.put(samples)


def in_processes(target: Any, args: tuple[Any, ...], count: int) -> float:
    """Run `target(*args, queue)` in `count` forked processes at once; the wall time."""
    queue: multiprocessing.Queue = multiprocessing.Queue()
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=target, args=(*args, queue)) for _ in range(count)]
    wall = time.perf_counter()
    for p in procs:
        p.start()
    for _ in procs:
        queue.get(timeout=600)
    wall = time.perf_counter() - wall
    for p in procs:
        p.join()
    return wall


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


class LagSampler:
    """Samples the sequencing lag (events committed and not yet chained) every 20 ms."""

    def __init__(self) -> None:
        self.waiting: list[int] = []
        self.age: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from django.db import connection

        from audit.sequencer import sequencing_lag

        while not self._stop.wait(0.02):
            lag = sequencing_lag()
            self.waiting.append(lag.waiting)
            self.age.append(lag.age().total_seconds())
        connection.close()

    def __enter__(self) -> LagSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    url = use_bench_database(os.environ.get("BENCH_DB", "baton_bench"))
    from django.db import connections

    from audit.sequencer import inline

    print(
        f"gateway benchmark: {STEPS} governed steps a process, floor from {FLOOR_SAMPLES} "
        f"raw INSERT+COMMIT pairs; audit events chained "
        f"{'inline' if inline() else 'by the sequencer'}"
    )
    floor = floor_insert_commit(url, pairs=True)
    bare = bare_calls()
    governed_run(200)  # warm caches and connections
    chained_all()
    governed, elapsed = governed_run(STEPS)
    chained_all()
    connections.close_all()

    rates: dict[int, tuple[float, float]] = {}  # processes -> (raw inserts/s, steps/s)
    lags: dict[int, LagSampler] = {}
    for count in PROCESSES:
        connections.close_all()  # a forked child must not share (and close) this one's
        raw = count * FLOOR_SAMPLES / in_processes(_floor_worker, (url, FLOOR_SAMPLES), count)
        with LagSampler() as lags[count]:
            wall = in_processes(_worker, (STEPS,), count)
        drain = chained_all()
        connections.close_all()
        rates[count] = (raw, count * STEPS / wall)
        print(f"  ({count} process(es): last events chained {ms(drain)} after the runs ended)")

    f50, f99 = pct(floor, 0.5), pct(floor, 0.99)
    b50 = pct(bare, 0.5)
    g50, g99 = pct(governed, 0.5), pct(governed, 0.99)
    added50, added99 = g50 - b50, g99 - b50
    rows = [
        ("floor: two INSERT+COMMITs p50", ms(f50), f"p99 {ms(f99)}"),
        ("bare tool call p50", ms(b50), ""),
        ("governed step p50", ms(g50), f"p99 {ms(g99)}"),
        ("added by the gateway p50", ms(added50), f"= {added50 / f50:.2f}x floor (budget <= 2x)"),
        ("added by the gateway p99", ms(added99), f"= {added99 / f99:.2f}x floor p99"),
        ("governed steps/s, 1 process, one run", f"{STEPS / elapsed:,.0f}", ""),
    ]
    for count, (raw, steps) in rates.items():
        rows.append(
            (
                f"{count} process(es): steps/s | raw INSERT+COMMIT/s",
                f"{steps:,.0f}",
                f"| {raw:,.0f}: steps = {steps / raw:.3f}x raw"
                + (" (budget >= 0.25x)" if count == 4 else ""),
            )
        )
        lag = lags[count]
        if lag.waiting:
            waiting = [float(w) for w in lag.waiting]
            rows.append(
                (
                    f"{count} process(es): sequencing lag",
                    f"{pct(waiting, 0.5):,.0f} / {max(waiting):,.0f} events",
                    f"waiting p50 / max; oldest p50 {ms(pct(lag.age, 0.5))}, "
                    f"p99 {ms(pct(lag.age, 0.99))}, max {ms(max(lag.age))}",
                )
            )
    if 1 in rates and 2 in rates:
        growth = rates[2][1] / rates[1][1]
        floor_growth = rates[2][0] / rates[1][0]
        rows.append(
            (
                "1 -> 2 processes",
                f"{growth:.2f}x",
                f"(budget >= 1.6x; raw inserts {floor_growth:.2f}x)",
            )
        )
    report(rows)


if __name__ == "__main__":
    main()
