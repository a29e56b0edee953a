"""What a Prometheus scrape of Baton's own figures costs on a long history (issue 14 §7).

The journal holds BENCH_METRICS_ACTIONS steps (10,000,000) over a year, one run per ten
steps, with a busy last five minutes (BENCH_METRICS_RECENT steps, 20,000: about 67 steps/s,
all of them in the metrics window); a thousand runs queued, two hundred running, five
hundred waiting; a hundred thousand decided approval requests and a thousand pending.
Measured: BatonCollector.collect() in process (its nine queries and the exposition
objects; no HTTP), BENCH_METRICS_SAMPLES times (50). The floor, from the same run: nine
bare `SELECT 1` round trips, the least nine queries can cost.

Run: python -m bench.metrics (database `bench_metrics`, dropped and re-created; it is
kept afterwards, and BENCH_METRICS_REUSE=1 measures it again with a fresh busy window).
"""

from __future__ import annotations

import os
import time

ACTIONS = int(os.environ.get("BENCH_METRICS_ACTIONS", "10000000"))
RECENT = int(os.environ.get("BENCH_METRICS_RECENT", "20000"))
SAMPLES = int(os.environ.get("BENCH_METRICS_SAMPLES", "50"))
REUSE = os.environ.get("BENCH_METRICS_REUSE") == "1"
DB_NAME = "bench_metrics"

from bench.common import ms, pct, report, use_bench_database, use_kept_database  # noqa: E402

RUNS_SQL = """
INSERT INTO agents_run (input, status, wait_reason, error, created_at, finished_at,
    attempts, agent_id, version_id, worker, start_key, enqueued_at, lease_until)
SELECT '{}'::jsonb,
       CASE WHEN g <= 1000 THEN 'queued' WHEN g <= 1200 THEN 'running'
            WHEN g <= 1700 THEN 'waiting' ELSE 'succeeded' END,
       CASE WHEN g > 1200 AND g <= 1700 THEN 'approval' ELSE '' END,
       '', now() - (g * interval '1 second') * %(spread)s, now(), 1, %(agent)s, %(version)s,
       '', '', now(), CASE WHEN g > 1000 AND g <= 1200 THEN now() + interval '1 hour' END
FROM generate_series(1, %(runs)s) AS g
"""

ACTIONS_SQL = """
INSERT INTO agents_action (seq, kind, name, requested_args, args, args_hash, status,
    decision, reason, error, meta, idempotency_key, attempts, created_at, run_id)
SELECT (g %% 10) + 1, 'tool', 'payments.pay', '{}'::jsonb, '{}'::jsonb, '',
       CASE WHEN g %% 50 = 0 THEN 'denied' WHEN g %% 20 = 0 THEN 'held' ELSE 'succeeded' END,
       CASE WHEN g %% 50 = 0 THEN 'deny' WHEN g %% 20 = 0 THEN 'approve' ELSE 'allow' END,
       '', '', '{}'::jsonb, 'k' || g, 1,
       now() - interval '10 minutes' - (g * interval '1 second') * %(spread)s,
       %(first_run)s + (g - 1) / 10
FROM generate_series(1, %(actions)s) AS g
"""

# The busy last minutes, stamped when they go in (a long seeding must not age them).
RECENT_SQL = """
DELETE FROM agents_action WHERE idempotency_key LIKE 'r%%';
INSERT INTO agents_action (seq, kind, name, requested_args, args, args_hash, status,
    decision, reason, error, meta, idempotency_key, attempts, created_at, run_id)
SELECT 11 + g, 'tool', 'payments.pay', '{}'::jsonb, '{}'::jsonb, '',
       CASE WHEN g %% 50 = 0 THEN 'denied' ELSE 'succeeded' END,
       CASE WHEN g %% 50 = 0 THEN 'deny' ELSE 'allow' END,
       '', '', '{}'::jsonb, 'r' || g, 1,
       clock_timestamp() - (g * interval '1 millisecond') * %(spread)s,
       %(run)s
FROM generate_series(1, %(recent)s) AS g
"""

APPROVALS_SQL = """
INSERT INTO approvals_approvalrequest (kind, tool, args, args_hash, risk, required_approvals,
    status, on_timeout, due_at, escalation_level, created_at, action_id, agent_id, run_id,
    version_id, escalated_to, approver_group)
SELECT 'policy', 'payments.pay', '{}'::jsonb, '', 'high', 1,
       CASE WHEN n <= 1000 THEN 'pending' ELSE 'approved' END, 'reject',
       now() + interval '1 hour', 0, a.created_at, a.id, %(agent)s, a.run_id, %(version)s, '', ''
FROM (SELECT id, run_id, created_at, row_number() OVER (ORDER BY id) AS n
      FROM agents_action WHERE status = 'held' ORDER BY id LIMIT 101000) AS a
"""


def seed() -> None:
    from django.db import connection

    from agents.services import agent_create, team_create, version_create, version_publish

    team = team_create(slug="bench", name="Bench")
    agent = agent_create(slug="bench-bot", name="Bench bot", team=team, user=None)
    version = version_create(
        agent=agent,
        program="agents.demo.programs.claim_payout",
        policy={"rules": [{"tool": "*", "effect": "allow"}]},
        config={"model": "scripted"},
        user=None,
    )
    version_publish(version=version, user=None, reason="bench")
    runs = max(2000, ACTIONS // 10)
    year = 365 * 24 * 3600
    with connection.cursor() as cursor:
        cursor.execute(
            RUNS_SQL,
            {"agent": agent.pk, "version": version.pk, "runs": runs, "spread": year / runs},
        )
        cursor.execute("SELECT min(id) FROM agents_run")
        (first_run,) = cursor.fetchone()
        cursor.execute(
            ACTIONS_SQL,
            {"actions": ACTIONS, "spread": year / ACTIONS, "first_run": first_run},
        )
        cursor.execute(APPROVALS_SQL, {"agent": agent.pk, "version": version.pk})
        cursor.execute("ANALYZE")


def busy_window() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT min(id) FROM agents_run")
        (run,) = cursor.fetchone()
        # Within the last 240 s, so every one is in the five-minute window when measured.
        cursor.execute(RECENT_SQL, {"recent": RECENT, "spread": 240_000 / RECENT, "run": run})
        cursor.execute("ANALYZE agents_action")


def reuse() -> None:
    use_kept_database(DB_NAME)


def main() -> None:
    if REUSE:
        reuse()
    else:
        use_bench_database(DB_NAME)
    from django.db import connection

    from console.telemetry import BATON

    started = time.monotonic()
    if not REUSE:
        seed()
        print(f"metrics: {ACTIONS:,} journal steps seeded in {time.monotonic() - started:.0f} s")
    busy_window()
    figures = {}
    for family in BATON.collect():
        for sample in family.samples:
            figures[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    recent = sum(v for (name, _), v in figures.items() if name == "baton_actions_recent")
    assert recent == RECENT, (recent, RECENT)
    samples = []
    for _ in range(SAMPLES):
        t = time.perf_counter()
        list(BATON.collect())
        samples.append(time.perf_counter() - t)
    floor = []
    with connection.cursor() as cursor:
        for _ in range(SAMPLES):
            t = time.perf_counter()
            for _ in range(9):
                cursor.execute("SELECT 1")
                cursor.fetchone()
            floor.append(time.perf_counter() - t)
    p50, p95, f50 = pct(samples, 0.5), pct(samples, 0.95), pct(floor, 0.5)
    report(
        [
            ("floor: nine SELECT 1, p50", ms(f50), ""),
            ("scrape of Baton's figures, p50", ms(p50), f"{p50 / f50:.1f}x the floor"),
            ("scrape of Baton's figures, p95", ms(p95), f"{p95 / f50:.1f}x the floor"),
        ]
    )


if __name__ == "__main__":
    main()
