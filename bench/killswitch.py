"""Kill-switch benchmark (DESIGN section 11): 20 busy hosted agents in a real Celery worker
process (Redis broker, threads pool), each in a long run of small governed steps; a halt
is engaged from this process. Two figures:

- actions admitted after the engage committed (budget 0), checked two ways: new journal
  rows for the halted runs after killswitch_engage returned, and `action.allowed` audit
  events of those runs placed after the `killswitch.engaged` event in the chain (an
  admission holds the switch lock the engage takes exclusively, so its event is queued
  wholly before or wholly after the engage's, and the sequencer chains in queue order);
- time until all 20 have stopped (budget p99 <= 100 ms): from just before the engage call
  to the later of the engage's commit and the end of the last step admitted before it.
  The tool writes its own start and end (CLOCK_MONOTONIC, shared by processes on one
  machine) to Redis, so the stop moment is not a polling artefact. Beside it, the moment
  a 1 ms poll of Postgres first sees no `started` journal row and every run cancelled.

Fleet size (`--runs 500 --agents 50 --slots 40`): 500 unfinished runs of 50 agents in
scope, as many executing at once as the worker has threads (each holds a Postgres
connection, so --slots is bounded by max_connections); the rest are queued behind them and
the halt cancels them all in the same transaction. Budget there: p99 <= 250 ms.

Floor, from the same run: one Postgres INSERT+COMMIT, then a Redis LPUSH that another
process is blocked on in BLPOP (as bench/approvals.py).
Run: make bench
"""

from __future__ import annotations

import argparse
import os
import random
import re
import time
from typing import Any

from bench.approvals import floor
from bench.common import (
    ms,
    pct,
    report,
    service_env,
    start_worker,
    statistics,
    use_bench_database,
)

AGENTS = 20  # defaults: 20 runs of 20 agents, all executing at once
RUNS = 20
SLOTS = 20
TRIALS = int(os.environ.get("BENCH_KILLSWITCH_TRIALS", "80"))
WARMUP = 2
WORK_MS = float(os.environ.get("BENCH_KILLSWITCH_WORK_MS", "5"))
BUSY_STEPS = 5  # each agent has journaled at least this many steps before the engage
HOLD_MS = (50, 250)  # then keeps going a random while, so the engage lands anywhere in a step
SCOPE = os.environ.get("BENCH_KILLSWITCH_SCOPE", "global")  # or "team"
POLL_S = 0.0005


def _settle_query() -> str:
    return (
        "SELECT (SELECT count(*) FROM agents_action WHERE run_id = ANY(%s) AND status = "
        "'started'), (SELECT count(*) FROM agents_run WHERE id = ANY(%s) AND status <> "
        "'cancelled')"
    )


def _statement(query: str) -> str:
    """A statement's name in the breakdown: the function it calls, or the table it reads."""
    called = re.search(r"\b(baton_\w+|pg_advisory_xact_lock)\(", query)
    if called:
        return called.group(1)
    table = re.search(r'(SELECT|INSERT INTO|UPDATE)\b.*?"(\w+)"', query)
    return f"{table.group(1).split()[0]} {table.group(2)}" if table else query[:30]


def trial(agents: list[Any], team: Any, client: Any) -> dict[str, Any]:
    from django.db import connection
    from django.db.models import Count

    from agents.models import Action
    from agents.services import killswitch_engage, killswitch_release, run_start
    from audit.models import AuditEvent
    from audit.services import audit_flush

    runs = [
        run_start(agent=agents[i % len(agents)], input={"work_ms": WORK_MS}) for i in range(RUNS)
    ]
    ids = [r.pk for r in runs]
    deadline = time.monotonic() + 60
    while True:
        counts = dict(
            Action.objects.filter(run_id__in=ids)
            .values_list("run_id")
            .annotate(n=Count("id"))
            .values_list("run_id", "n")
        )
        # Every worker thread busy on a run of this trial (the rest wait in the queue).
        if sum(n >= BUSY_STEPS for n in counts.values()) >= min(RUNS, SLOTS):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"the agents did not all get busy in time: {counts}")
        time.sleep(0.005)
    busy_at = time.perf_counter_ns()
    time.sleep(random.uniform(*HOLD_MS) / 1000)

    sql = {"lock": 0, "queries": 0, "count": 0}
    each: dict[str, int] = {}

    def timed(execute: Any, query: str, params: Any, many: bool, context: Any) -> Any:
        began = time.perf_counter_ns()
        try:
            return execute(query, params, many, context)
        finally:
            took = time.perf_counter_ns() - began
            sql["queries"] += took
            sql["count"] += 1
            if "pg_advisory_xact_lock" in query:
                sql["lock"] += took
            name = _statement(query)
            each[name] = each.get(name, 0) + took

    t0 = time.perf_counter_ns()
    with connection.execute_wrapper(timed):
        switch = killswitch_engage(
            scope=SCOPE,
            mode="halt",
            reason="bench",
            user=None,
            team=team if SCOPE == "team" else None,
        )
    engaged = time.perf_counter_ns()
    snapshot = set(Action.objects.filter(run_id__in=ids).values_list("pk", "run_id", "seq"))

    # Poll Postgres until no step is in flight and every run is cancelled.
    settled = None
    deadline = time.monotonic() + 30
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute(_settle_query(), [ids, ids])
            started_rows, live_runs = cursor.fetchone()
            if not started_rows and not live_runs:
                settled = time.perf_counter_ns()
                break
            time.sleep(POLL_S)
    if settled is None:
        raise RuntimeError("the runs did not stop within 30 s")
    time.sleep(0.3)  # let every worker thread make (and be refused) its next admission

    after = set(Action.objects.filter(run_id__in=ids).values_list("pk", "run_id", "seq"))
    admitted_after = after - snapshot
    audit_flush()  # the sequencer may not have come to the last events yet
    engage_seq = AuditEvent.objects.get(verb="killswitch.engaged", subject_id=str(switch.pk)).seq
    audit_after = AuditEvent.objects.filter(
        verb="action.allowed", run_id__in=ids, seq__gt=engage_seq
    ).count()

    admitted_before = {(run_id, seq) for _, run_id, seq in snapshot}
    last_end = 0
    in_flight = 0
    busy_steps = 0
    unjournaled = 0
    for run_id in ids:
        key = f"bench:busy:{run_id}"
        entries = [tuple(map(int, raw.split())) for raw in client.lrange(key, 0, -1)]
        client.delete(key)
        for n, began, ended in entries:
            if (run_id, n + 1) not in admitted_before:
                unjournaled += 1
                continue
            last_end = max(last_end, ended)
            in_flight += began < t0 < ended
            busy_steps += busy_at <= began < t0
    killswitch_release(switch=switch, user=None, reason="next trial")
    stopped = max(engaged, last_end)
    return {
        "admitted_after": admitted_after,
        "audit_after": audit_after,
        "unjournaled": unjournaled,
        "stop": (stopped - t0) / 1e9,
        "engage": (engaged - t0) / 1e9,
        "lock": sql["lock"] / 1e9,
        "sql": sql["queries"] / 1e9,
        "statements": sql["count"],
        "each": {name: took / 1e9 for name, took in each.items()},
        "settled": (settled - t0) / 1e9,
        "in_flight": in_flight,
        "rate": busy_steps / ((t0 - busy_at) / 1e9),
        "ids": ids,
        "snapshot": snapshot,
    }


def engage_alone(agents: list[Any], team: Any, trials: int = 15) -> list[float]:
    """The same engage with the worker gone: RUNS runs marked running, nothing else busy."""
    from agents.models import Run
    from agents.services import killswitch_engage, killswitch_release

    timings = []
    for _ in range(trials):
        Run.objects.bulk_create(
            Run(
                agent=agent,
                version_id=agent.live_version_id,
                input={},
                status=Run.Status.RUNNING,
            )
            for agent in (agents[i % len(agents)] for i in range(RUNS))
        )
        started = time.perf_counter_ns()
        switch = killswitch_engage(
            scope=SCOPE,
            mode="halt",
            reason="bench",
            user=None,
            team=team if SCOPE == "team" else None,
        )
        timings.append((time.perf_counter_ns() - started) / 1e9)
        killswitch_release(switch=switch, user=None, reason="next trial")
    return timings


def arguments() -> None:
    global AGENTS, RUNS, SLOTS, TRIALS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=RUNS, help="unfinished runs in scope")
    parser.add_argument("--agents", type=int, help="agents they belong to (default: min(runs, 20))")
    parser.add_argument("--slots", type=int, help="worker threads (default: min(runs, 40))")
    parser.add_argument("--trials", type=int, help="default 80, or 30 with more than 20 runs")
    args = parser.parse_args()
    RUNS = args.runs
    AGENTS = args.agents or min(RUNS, 20)
    SLOTS = args.slots or min(RUNS, 40)
    TRIALS = args.trials or (TRIALS if RUNS <= 20 else 30)


def main() -> None:
    arguments()
    db_url = use_bench_database(os.environ.get("BENCH_KILLSWITCH_DB", "baton_bench_killswitch"))
    redis_url = os.environ["REDIS_URL"]
    import redis

    from agents.services import agent_create, team_create, version_create, version_publish

    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter("bench:busy:*"):
        client.delete(key)
    team = team_create(slug="bench", name="Bench")
    agents = []
    for i in range(AGENTS):
        agent = agent_create(slug=f"bench-busy-{i}", name=f"Busy {i}", team=team)
        version_publish(
            version=version_create(
                agent=agent,
                program="bench.support.busy_agent",
                policy={"rules": [{"tool": "bench.*", "effect": "allow"}]},
            ),
            user=None,
            reason="benchmark set-up",
        )
        agent.refresh_from_db()
        agents.append(agent)

    env, queue = service_env(db_url, BATON_RUN_LEASE_SECONDS="30")
    worker = start_worker(env, queue, SLOTS, "bench-killswitch-worker.log")
    try:
        from celery import current_app

        current_app.conf.task_default_queue = queue
        for _ in range(WARMUP):
            trial(agents, team, client)
        results = [trial(agents, team, client) for _ in range(TRIALS)]
        time.sleep(1)
        # Once more at the end, for admissions later than a trial's quiet window.
        from agents.models import Action

        all_ids = [i for r in results for i in r["ids"]]
        late = set(Action.objects.filter(run_id__in=all_ids).values_list("pk", "run_id", "seq"))
        late -= set().union(*(r["snapshot"] for r in results))
    finally:
        worker.terminate()
        worker.wait(10)

    alone = engage_alone(agents, team)
    base_floor = floor(db_url, redis_url)
    f50, f99 = pct(base_floor, 0.5), pct(base_floor, 0.99)
    stops = [r["stop"] for r in results]
    engages = [r["engage"] for r in results]
    settles = [r["settled"] for r in results]
    s50, s99 = pct(stops, 0.5), pct(stops, 0.99)
    max_note = f"; the slowest of {TRIALS}" if pct(stops, 0.99) == max(stops) else ""
    admitted = len(late | {a for r in results for a in r["admitted_after"]})
    checked = sum(len(r["snapshot"]) for r in results)
    audit_after = sum(r["audit_after"] for r in results)
    unjournaled = sum(r["unjournaled"] for r in results)
    print(
        f"kill-switch benchmark: {TRIALS} trials ({SCOPE} halt), {RUNS} unfinished runs of "
        f"{AGENTS} agents, {min(RUNS, SLOTS)} executing at once in one worker process "
        f"({SLOTS} threads), steps of {WORK_MS:g} ms work"
    )
    budget = 100 if RUNS <= 20 else 250
    report(
        [
            ("floor: commit + LPUSH->BLPOP p50", ms(f50), f"p99 {ms(f99)}"),
            (
                "busy load before the engage",
                f"{statistics.mean(r['rate'] for r in results):,.0f}",
                "governed steps/s, all agents together (mean)",
            ),
            (
                "steps in flight at the engage",
                f"{statistics.mean(r['in_flight'] for r in results):.1f}",
                f"mean, of {min(RUNS, SLOTS)} executing runs",
            ),
            (
                "actions admitted after engage",
                str(admitted),
                f"(budget 0): new journal rows; {checked:,} steps admitted before",
            ),
            ("  same, by audit-chain order", str(audit_after), "action.allowed after the engage"),
            (
                "  tool runs not journaled before it",
                str(unjournaled),
                "(their start and end, from Redis)",
            ),
            ("all stopped p50", ms(s50), f"= {s50 / f50:.1f}x floor"),
            (
                "  met" if s99 <= budget / 1000 else "  NOT met",
                f"p99 <= {budget} ms",
                "(0 admitted: " + ("met)" if not (admitted or audit_after) else "NOT met)"),
            ),
            (
                "all stopped p99",
                ms(s99),
                f"= {s99 / f99:.1f}x floor p99 (budget {budget} ms){max_note}",
            ),
            (
                "of which the engage call p50",
                ms(pct(engages, 0.5)),
                f"p99 {ms(pct(engages, 0.99))}",
            ),
            (
                "  waiting for the switch lock p50",
                ms(pct([r["lock"] for r in results], 0.5)),
                f"p99 {ms(pct([r['lock'] for r in results], 0.99))}",
            ),
            (
                "  in SQL statements p50",
                ms(pct([r["sql"] for r in results], 0.5)),
                f"{statistics.mean(r['statements'] for r in results):.0f} statements "
                "(lock wait included, COMMIT not)",
            ),
            (
                "  the rest (ORM, COMMIT) p50",
                ms(pct([r["engage"] - r["sql"] for r in results], 0.5)),
                f"p99 {ms(pct([r['engage'] - r['sql'] for r in results], 0.99))}",
            ),
            *(
                (
                    f"    {name}",
                    ms(pct([r["each"].get(name, 0.0) for r in results], 0.5)),
                    f"p99 {ms(pct([r['each'].get(name, 0.0) for r in results], 0.99))}",
                )
                for name in sorted(
                    {n for r in results for n in r["each"]},
                    key=lambda n: -pct([r["each"].get(n, 0.0) for r in results], 0.5),
                )
            ),
            (
                "engage alone, no worker, p50",
                ms(pct(alone, 0.5)),
                f"p99 {ms(pct(alone, 0.99))} ({len(alone)} engages, {RUNS} runs each)",
            ),
            (
                "DB poll sees all stopped p50",
                ms(pct(settles, 0.5)),
                f"p99 {ms(pct(settles, 0.99))} (1 ms poll)",
            ),
        ]
    )


if __name__ == "__main__":
    main()
