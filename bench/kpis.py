"""The KPI pages, and the pages of DESIGN section 11, with a year of history (issue 14):
100 agents in 10 teams, each starting BENCH_KPIS_RUNS_PER_DAY runs a day (20) for 365
days — 730,000 runs with their journal (a model call, a tool step, a model call and a
note: about 2.6 million steps), the approval requests of the held steps with the people's
decisions, the payments and purchase orders the steps wrote, the shadow version's
decisions of the last 30 days, and 1,000 pending requests (ten waiting runs an agent);
then the KPI rollup (agents.rollup) filled as its beat timer keeps it, every closed hour
rolled up.

Measured, as bench/pages.py measures (Django's test Client in-process: middleware,
session, view, queries, template; no network), p50 / p95 server time: an agent's KPI page
in each window (24h, 7d, 30d), the fleet's KPI page in each window, the overview, the
approval queue, an agent page and a run page, for a supervisor of 5 teams and a
compliance officer (all 100 agents). Floors from the same run, as in bench/pages.py: the
login page and a bare `SELECT 1`. Budget (DESIGN section 11, "pages"): p95 <= 100 ms.
Every page's query count is printed; the fleet KPI page's must be the same for a
supervisor of one team as of five (no query per agent), and it is asserted. A KPI page
asked again within the hour finds its window's rolled-up part kept (agents.kpis
.closed_part), as the samples do after the first; each KPI page is also measured "read
anew" (BENCH_KPIS_ANEW_SAMPLES requests, 10, each after a new rollup generation), what
its first asking in an hour costs.

The history goes in as SQL (INSERT … SELECT over generate_series; every fate — failed,
denied, held, rejected — is a hash of the run's id, so a run's rows agree with each other
and a rebuild is the same history); the audit trail, which the KPIs do not read and the
overview reads the head of, is BENCH_KPIS_EVENTS events (100,000; bench/pages.py measures
the pages at ten million) loaded by
bench/audit.py's loader. Run: python -m bench.kpis (database BENCH_KPIS_DB, `bench_kpis`,
dropped and re-created, then kept; BENCH_KPIS_REUSE=1 measures it again without building;
BENCH_KPIS_SAMPLES samples a page, 50, fewer — at least 5 — for a page that has taken
BENCH_KPIS_PAGE_SECONDS, 30; BENCH_KPIS_ONLY=overview,queue measures only the pages whose
names start so).
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

RUNS_PER_DAY = int(os.environ.get("BENCH_KPIS_RUNS_PER_DAY", "20"))
DAYS = int(os.environ.get("BENCH_KPIS_DAYS", "365"))
EVENTS = int(os.environ.get("BENCH_KPIS_EVENTS", "100000"))
SAMPLES = int(os.environ.get("BENCH_KPIS_SAMPLES", "50"))
# A page far over the budget stops sampling after this long (at least MIN_SAMPLES).
PAGE_SECONDS = float(os.environ.get("BENCH_KPIS_PAGE_SECONDS", "30"))
MIN_SAMPLES = 5
# A KPI page asked with its window's rolled-up part read anew, not kept (read_anew).
ANEW_SAMPLES = int(os.environ.get("BENCH_KPIS_ANEW_SAMPLES", "10"))
DB_NAME = os.environ.get("BENCH_KPIS_DB", "bench_kpis")
REUSE = os.environ.get("BENCH_KPIS_REUSE") == "1"
# Only the pages whose names start with one of these (comma-separated), e.g. "overview,queue".
ONLY = [p for p in os.environ.get("BENCH_KPIS_ONLY", "").split(",") if p]
WORK = Path(tempfile.gettempdir()) / DB_NAME
BUDGET_P95 = 0.100
TEAMS, PER_TEAM, PENDING_PER_AGENT = 10, 10, 10
# bench.audit reads its number of rows when imported.
os.environ["BENCH_AUDIT_ROWS"] = str(EVENTS)

# What the teams do: the tool of each run's second step (the one policy may hold), which
# sandbox table it writes, and the kind of trail bench.audit writes for them.
TOOLS = ["payments.pay"] * 4 + ["purchasing.create_po"] * 3 + ["email.send"] * 3
KINDS = ["payments"] * 4 + ["data"] * 3 + ["support"] * 3

# A deterministic number 0–999 from a run's id and a salt: the run's fates.
HASH_SQL = """
CREATE OR REPLACE FUNCTION pg_temp.bench_h(x bigint, salt int) RETURNS int
LANGUAGE sql IMMUTABLE AS
$$ SELECT ((hashint8(x * 16 + salt)::bigint & 2147483647) % 1000)::int $$
"""

# Salts: 1 the run's fate (<60 failed, of which <10 diverged; <75 cancelled), 2 the tool
# step's (<20 denied; <65 held then approved; <75 held then rejected; <80 held, expired),
# 3 the cycle time, 4 the time to decide, 5 amounts and tokens, 6 the shadow's effect.
RUNS_SQL = """
INSERT INTO agents_run (id, input, status, wait_reason, error, created_at, started_at,
    finished_at, enqueued_at, attempts, agent_id, version_id, worker, start_key)
SELECT r.id, jsonb_build_object('claim', 'C-' || r.id),
       CASE WHEN r.f < 60 THEN 'failed' WHEN r.f < 75 THEN 'cancelled' ELSE 'succeeded' END,
       '',
       CASE WHEN r.f < 10 THEN 'diverged at step 3: the program asked for crm.note, '
                               'the journal holds a model call'
            WHEN r.f < 60 THEN 'upstream answered 502' ELSE '' END,
       r.at, r.at,
       r.at + make_interval(secs => 2 + pg_temp.bench_h(r.id, 3) * 0.12
           + CASE WHEN pg_temp.bench_h(r.id, 3) > 950 THEN 900 ELSE 0 END
           + CASE WHEN r.s >= 20 AND r.s < 75 THEN 20 + pg_temp.bench_h(r.id, 4) * 5.4
                  WHEN r.s >= 75 AND r.s < 80 THEN 9000 ELSE 0 END),
       r.at, 1, r.agent,
       CASE WHEN r.canary <> 0 AND r.at > %(now)s - interval '14 days'
                 AND pg_temp.bench_h(r.id, 7) < 100 THEN r.canary
            WHEN r.at < %(now)s - interval '180 days' THEN r.old ELSE r.live END,
       'bench', ''
FROM (
    SELECT %(base)s + g AS id,
           %(now)s - (%(n)s - g) * %(spacing)s * interval '1 second' AS at,
           (%(agents)s::bigint[])[1 + g %% %(a)s] AS agent,
           (%(live)s::bigint[])[1 + g %% %(a)s] AS live,
           (%(old)s::bigint[])[1 + g %% %(a)s] AS old,
           (%(canary)s::bigint[])[1 + g %% %(a)s] AS canary,
           pg_temp.bench_h(%(base)s + g, 1) AS f,
           pg_temp.bench_h(%(base)s + g, 2) AS s
    FROM generate_series(1, %(n)s) AS g
) AS r
"""

# A model call, the team's tool step, a model call, a note; a failed or cancelled run
# stops after the tool step (which failed, unless policy stopped it first).
ACTIONS_SQL = """
INSERT INTO agents_action (seq, kind, name, requested_args, args, args_hash, status,
    decision, reason, error, meta, idempotency_key, attempts, created_at, started_at,
    finished_at, run_id, rule_index)
SELECT q.seq, q.kind, q.name, q.args, q.args, md5(q.args::text), q.status, q.decision,
       '', CASE WHEN q.status = 'failed' THEN 'upstream answered 502' ELSE '' END,
       q.meta, q.run_id || ':' || q.seq, 1, q.at, q.at, q.at, q.run_id,
       CASE WHEN q.kind = 'tool' THEN 0 END
FROM (
    SELECT r.id AS run_id, st.seq,
           CASE WHEN st.seq %% 2 = 1 THEN 'model' ELSE 'tool' END AS kind,
           CASE WHEN st.seq %% 2 = 1 THEN 'scripted' WHEN st.seq = 2 THEN t.tool
                ELSE 'crm.note' END AS name,
           CASE WHEN st.seq %% 2 = 1 THEN '{}'::jsonb
                ELSE jsonb_build_object('ref', 'C-' || r.id,
                                        'amount', 10 + pg_temp.bench_h(r.id, 5) * 4.5) END
               AS args,
           CASE WHEN st.seq <> 2 THEN 'succeeded'
                WHEN fs.s < 20 THEN 'denied'
                WHEN fs.s >= 65 AND fs.s < 80 THEN 'rejected'
                WHEN fs.f < 75 THEN CASE WHEN fs.f < 60 THEN 'failed' ELSE 'cancelled' END
                ELSE 'succeeded' END AS status,
           CASE WHEN st.seq %% 2 = 1 THEN ''
                WHEN st.seq = 2 AND fs.s < 20 THEN 'deny'
                WHEN st.seq = 2 AND fs.s < 80 THEN 'approve' ELSE 'allow' END AS decision,
           CASE WHEN st.seq %% 2 = 1 THEN jsonb_build_object(
                    'model', 'gpt-4.1-mini',
                    'tokens_in', 300 + pg_temp.bench_h(r.id, 5) * 3 + st.seq,
                    'tokens_out', 40 + pg_temp.bench_h(r.id, 8) / 2,
                    'cost_eur', round((0.0004 + pg_temp.bench_h(r.id, 5) * 0.00002)::numeric, 6))
                ELSE '{}'::jsonb END AS meta,
           r.created_at + st.seq * interval '1 second'
               + CASE WHEN st.seq > 2 AND fs.s >= 20 AND fs.s < 75
                      THEN (20 + pg_temp.bench_h(r.id, 4) * 5.4) * interval '1 second'
                      ELSE interval '0' END AS at
    FROM agents_run r
    CROSS JOIN LATERAL (SELECT pg_temp.bench_h(r.id, 1) AS f, pg_temp.bench_h(r.id, 2) AS s) fs
    JOIN (SELECT unnest(%(agents)s::bigint[]) AS agent, unnest(%(tools)s::text[]) AS tool) t
        ON t.agent = r.agent_id
    CROSS JOIN LATERAL generate_series(1, CASE WHEN fs.f < 75 THEN 2 ELSE 4 END) AS st(seq)
    WHERE r.id > %(base)s AND r.id <= %(top)s
) AS q
"""

REQUESTS_SQL = """
INSERT INTO approvals_approvalrequest (kind, tool, args, args_hash, risk, rule_index,
    required_approvals, status, on_timeout, due_at, escalation_level, created_at, decided_at,
    action_id, agent_id, run_id, version_id, escalated_to, approver_group)
SELECT 'policy', a.name, a.args, a.args_hash, 'high', 0, 1,
       CASE WHEN s < 65 THEN 'approved' WHEN s < 75 THEN 'rejected' ELSE 'expired' END,
       'reject', a.created_at + interval '2 hours', 0, a.created_at,
       CASE WHEN s < 75 THEN a.created_at + (20 + pg_temp.bench_h(r.id, 4) * 5.4)
                                            * interval '1 second'
            ELSE a.created_at + interval '2 hours' END,
       a.id, r.agent_id, r.id, r.version_id, '', ''
FROM agents_action a
JOIN agents_run r ON r.id = a.run_id
CROSS JOIN LATERAL (SELECT pg_temp.bench_h(r.id, 2) AS s) fs
WHERE a.seq = 2 AND a.decision = 'approve' AND r.id > %(base)s AND r.id <= %(top)s
"""

DECISIONS_SQL = """
INSERT INTO approvals_approvaldecision (verdict, comment, args_hash, created_at, user_id,
    request_id)
SELECT CASE WHEN q.status = 'approved' THEN 'approve' ELSE 'reject' END,
       CASE WHEN q.status = 'approved' THEN '' ELSE 'amount above what the claim supports' END,
       q.args_hash, q.decided_at, (%(approvers)s::int[])[1 + q.id %% %(n)s], q.id
FROM approvals_approvalrequest q
WHERE q.status IN ('approved', 'rejected') AND q.run_id > %(base)s AND q.run_id <= %(top)s
"""

PAYMENTS_SQL = """
INSERT INTO agents_payment (idempotency_key, claim_id, payee, amount, currency, created_at)
SELECT a.idempotency_key, 'C-' || a.run_id, 'payee ' || (a.run_id %% 977),
       10 + pg_temp.bench_h(a.run_id, 5) * 4.5,
       CASE WHEN pg_temp.bench_h(a.run_id, 9) < 800 THEN 'EUR' ELSE 'USD' END, a.created_at
FROM agents_action a
WHERE a.seq = 2 AND a.name = 'payments.pay' AND a.status = 'succeeded'
  AND a.run_id > %(base)s AND a.run_id <= %(top)s
"""

ORDERS_SQL = """
INSERT INTO agents_purchaseorder (idempotency_key, sku, supplier, quantity, unit_price, total,
    created_at)
SELECT a.idempotency_key, 'SKU-' || (a.run_id %% 499), 'supplier ' || (a.run_id %% 37),
       1 + pg_temp.bench_h(a.run_id, 5) / 20, 12.50,
       (1 + pg_temp.bench_h(a.run_id, 5) / 20) * 12.50, a.created_at
FROM agents_action a
WHERE a.seq = 2 AND a.name = 'purchasing.create_po' AND a.status = 'succeeded'
  AND a.run_id > %(base)s AND a.run_id <= %(top)s
"""

# The shadow version decides every tool step of the agents that have one, over the last
# 30 days; one in twenty otherwise than the live version did.
SHADOW_SQL = """
INSERT INTO agents_shadowdecision (effect, rule_index, reason, created_at, action_id,
    agent_id, version_id)
SELECT CASE WHEN pg_temp.bench_h(a.id, 6) < 50
            THEN CASE WHEN a.decision = 'allow' THEN 'approve' ELSE 'allow' END
            ELSE a.decision END,
       0, '', a.created_at, a.id, g.id, g.shadow_version_id
FROM agents_action a
JOIN agents_run r ON r.id = a.run_id
JOIN agents_agent g ON g.id = r.agent_id
WHERE a.kind = 'tool' AND g.shadow_version_id IS NOT NULL
  AND r.created_at >= %(now)s - interval '30 days' AND r.id > %(base)s AND r.id <= %(top)s
"""

# Ten runs an agent waiting on a pending request, created in the last two hours.
PENDING_RUNS_SQL = """
INSERT INTO agents_run (id, input, status, wait_reason, error, created_at, started_at,
    enqueued_at, attempts, agent_id, version_id, worker, start_key)
SELECT %(base)s + g, jsonb_build_object('claim', 'P-' || g), 'waiting', 'approval', '',
       %(now)s - (g * 7) * interval '1 second', %(now)s - (g * 7) * interval '1 second',
       %(now)s, 1, (%(agents)s::bigint[])[1 + g %% %(a)s],
       (%(live)s::bigint[])[1 + g %% %(a)s], 'bench', ''
FROM generate_series(1, %(n)s) AS g
"""

PENDING_ACTIONS_SQL = """
INSERT INTO agents_action (seq, kind, name, requested_args, args, args_hash, status,
    decision, reason, error, meta, idempotency_key, attempts, created_at, started_at, run_id,
    rule_index)
SELECT st.seq, CASE WHEN st.seq = 1 THEN 'model' ELSE 'tool' END,
       CASE WHEN st.seq = 1 THEN 'scripted' ELSE t.tool END,
       CASE WHEN st.seq = 1 THEN '{}'::jsonb ELSE jsonb_build_object('ref', 'P-' || r.id) END,
       CASE WHEN st.seq = 1 THEN '{}'::jsonb ELSE jsonb_build_object('ref', 'P-' || r.id) END,
       md5('P-' || r.id), CASE WHEN st.seq = 1 THEN 'succeeded' ELSE 'held' END,
       CASE WHEN st.seq = 1 THEN '' ELSE 'approve' END, '', '',
       CASE WHEN st.seq = 1
            THEN '{"model": "gpt-4.1-mini", "tokens_in": 900, "tokens_out": 120, "cost_eur": 0.004}'
            ELSE '{}' END::jsonb,
       r.id || ':' || st.seq, 1, r.created_at + st.seq * interval '1 second', r.created_at,
       r.id, CASE WHEN st.seq = 2 THEN 0 END
FROM agents_run r
JOIN (SELECT unnest(%(agents)s::bigint[]) AS agent, unnest(%(tools)s::text[]) AS tool) t
    ON t.agent = r.agent_id
CROSS JOIN generate_series(1, 2) AS st(seq)
WHERE r.id > %(base)s
"""

PENDING_REQUESTS_SQL = """
INSERT INTO approvals_approvalrequest (kind, tool, args, args_hash, risk, rule_index,
    required_approvals, status, on_timeout, due_at, escalation_level, created_at, action_id,
    agent_id, run_id, version_id, escalated_to, approver_group)
SELECT 'policy', a.name, a.args, a.args_hash,
       (ARRAY['low', 'medium', 'high', 'critical'])[1 + a.id %% 4], 0, 1, 'pending', 'reject',
       a.created_at + interval '8 hours', 0, a.created_at, a.id,
       r.agent_id, r.id, r.version_id, '', ''
FROM agents_action a JOIN agents_run r ON r.id = a.run_id
WHERE a.seq = 2 AND r.id > %(base)s
"""


@dataclass
class History:
    teams: list[Any]
    agents: list[Any]
    runs: int
    seconds: dict[str, float]


def build_history(
    *,
    runs_per_day: int = RUNS_PER_DAY,
    days: int = DAYS,
    teams: int = TEAMS,
    per_team: int = PER_TEAM,
    pending_per_agent: int = PENDING_PER_AGENT,
    now: datetime | None = None,
    prefix: str = "kpi",
    log: Any = None,
    rollup: bool = True,
) -> History:
    """Teams of agents, each with three versions (v1 retired half a year ago, v2 live; v3 a
    10 % canary for the first agent of a team and the shadow version of the second), and
    `runs_per_day` runs an agent over `days` days ending `now`, with everything the KPIs
    read; then `pending_per_agent` runs an agent waiting on a pending request; then, with
    `rollup`, the KPI rollup caught up as its beat timer keeps it. Postgres."""
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction
    from django.utils import timezone

    from agents.models import Agent, AgentVersion, Team

    now = now or timezone.now()
    seconds: dict[str, float] = {}

    def step(name: str, sql: str, params: dict[str, Any]) -> None:
        began = time.perf_counter()
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            rows = cursor.rowcount
        seconds[name] = time.perf_counter() - began
        if log:
            log(f"  {name}: {rows:,} rows in {seconds[name]:.1f} s")

    with transaction.atomic():
        made_teams = Team.objects.bulk_create(
            [Team(slug=f"{prefix}-t{t:02d}", name=f"{prefix} team {t:02d}") for t in range(teams)]
        )
        agents = Agent.objects.bulk_create(
            [
                Agent(slug=f"{prefix}-t{t:02d}-a{i:02d}", name=f"Agent {t:02d}-{i:02d}", team=team)
                for t, team in enumerate(made_teams)
                for i in range(per_team)
            ]
        )
        versions: dict[tuple[int, int], AgentVersion] = {}
        made = AgentVersion.objects.bulk_create(
            [
                AgentVersion(
                    agent=agent,
                    number=n,
                    program="tests.support.agents.counter",
                    policy={"rules": [{"tool": "*", "effect": "allow"}]},
                    config={"model": "scripted"},
                    stage=stage,
                    published_at=now - timedelta(days=days),
                )
                for agent in agents
                for n, stage in ((1, "retired"), (2, "live"), (3, "canary"))
            ]
        )
        for v in made:
            versions[(v.agent_id, v.number)] = v
        for i, agent in enumerate(agents):
            agent.live_version = versions[(agent.pk, 2)]
            agent.previous_version = versions[(agent.pk, 1)]
            if i % per_team == 0:
                agent.canary_version = versions[(agent.pk, 3)]
                agent.canary_percent = 10
            elif i % per_team == 1:
                agent.shadow_version = versions[(agent.pk, 3)]
        Agent.objects.bulk_update(
            agents,
            ["live_version", "previous_version", "canary_version", "canary_percent"]
            + ["shadow_version"],
            batch_size=1000,
        )
        users = get_user_model().objects
        approvers = [users.create_user(f"{prefix}-approver-{n}") for n in range(5)]
        ids = [a.pk for a in agents]
        tools = [TOOLS[(i // per_team) % len(TOOLS)] for i in range(len(agents))]
        n = runs_per_day * days * len(agents)
        with connection.cursor() as cursor:
            cursor.execute(HASH_SQL)
            cursor.execute("SELECT coalesce(max(id), 0) FROM agents_run")
            (base,) = cursor.fetchone()
        agent_arrays = {
            "agents": ids,
            "live": [versions[(pk, 2)].pk for pk in ids],
            "old": [versions[(pk, 1)].pk for pk in ids],
            "canary": [
                versions[(pk, 3)].pk if i % per_team == 0 else 0 for i, pk in enumerate(ids)
            ],
            "a": len(ids),
        }
        span = {"base": base, "top": base + n}
        step(
            "runs",
            RUNS_SQL,
            {**agent_arrays, **span, "n": n, "now": now, "spacing": days * 86400 / max(n, 1)},
        )
        step("steps", ACTIONS_SQL, {"agents": ids, "tools": tools, **span})
        step("requests", REQUESTS_SQL, span)
        step("decisions", DECISIONS_SQL, {**span, "approvers": [u.pk for u in approvers], "n": 5})
        step("payments", PAYMENTS_SQL, span)
        step("purchase orders", ORDERS_SQL, span)
        step("shadow decisions", SHADOW_SQL, {**span, "now": now})
        pending = {"base": base + n, "now": now}
        waiting = pending_per_agent * len(agents)
        step("waiting runs", PENDING_RUNS_SQL, {**agent_arrays, **pending, "n": waiting})
        step("their steps", PENDING_ACTIONS_SQL, {"agents": ids, "tools": tools, **pending})
        step("pending requests", PENDING_REQUESTS_SQL, pending)
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT setval(pg_get_serial_sequence('agents_run', 'id'), max(id)) FROM agents_run"
            )
    if rollup:
        # As the beat timer would have kept it (agents.rollup): every closed hour of the
        # history rolled up, the hours of the waiting runs left open.
        from agents.rollup import kpi_rollup

        began = time.perf_counter()
        rolled = kpi_rollup()
        seconds["rollup"] = time.perf_counter() - began
        if log:
            log(
                f"  rollup: {rolled.hours:,} hours, {rolled.written:,} agent version hours, "
                f"{rolled.open:,} agent hours open, in {seconds['rollup']:.1f} s"
            )
    return History(made_teams, agents, n + waiting, seconds)


# --- measuring -------------------------------------------------------------------------------


def measure(client: Any, url: str, samples: int) -> tuple[list[float], int, float, str, float]:
    """As bench/pages.py measures (bench.common.measure_page), a page far over the budget
    for BENCH_KPIS_PAGE_SECONDS at least MIN_SAMPLES times."""
    from bench.common import measure_page

    return measure_page(client, url, samples, page_seconds=PAGE_SECONDS, min_samples=MIN_SAMPLES)


def query_count(client: Any, url: str) -> int:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client.get(url)
    with CaptureQueriesContext(connection) as queries:
        assert client.get(url).status_code == 200, url
    return len(queries)


def read_anew(client: Any, url: str, name: str, who: str, floor: float) -> tuple[str, str, str]:
    """A KPI page as it is the first time within an hour (or after the rollup moved on):
    the window's rolled-up part read, not found kept (agents.kpis.closed_part; a new
    generation of the rollup before each request). The budget's figure is the page's
    p95 above, where that part is kept as a page asked again within the hour finds it;
    this one says what the first asking costs."""
    from agents.models import KpiRollup
    from bench.common import pct

    times = []
    for _ in range(ANEW_SAMPLES):
        KpiRollup.objects.update(generation=uuid.uuid4())
        began = time.perf_counter()
        assert client.get(url).status_code == 200, url
        times.append(time.perf_counter() - began)
    p95 = pct(times, 0.95)
    return (
        f"{name}, {who}, read anew",
        f"{pct(times, 0.5) * 1000:.1f} / {p95 * 1000:.1f} ms",
        f"p95 {p95 / floor:.1f}x the login page; {len(times)} samples; the rolled-up part "
        "read, as once an hour",
    )


def people(teams: list[Any], prefix: str = "kpi") -> tuple[Any, Any, Any]:
    """A supervisor of the last 5 teams, a supervisor of the last team alone, and a
    compliance officer (sees all)."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    from agents import roles

    roles.roles_ensure()
    users = get_user_model().objects
    supervisor = users.create_user(f"{prefix}-supervisor")
    for team in teams[-5:]:
        roles.role_grant(user=supervisor, role=roles.SUPERVISOR, target=team)
    one = users.create_user(f"{prefix}-supervisor-one")
    roles.role_grant(user=one, role=roles.SUPERVISOR, target=teams[-1])
    compliance = users.create_user(f"{prefix}-compliance")
    compliance.groups.add(Group.objects.get(name=roles.COMPLIANCE))
    return supervisor, one, compliance


def database() -> str:
    from bench.common import audit_keys_in, use_bench_database

    audit_keys_in(WORK, fresh=True)
    return use_bench_database(DB_NAME)


def reuse() -> str:
    from bench.common import audit_keys_in, use_kept_database

    audit_keys_in(WORK, fresh=False)
    return use_kept_database(DB_NAME)


def uptime() -> str:
    with open("/proc/loadavg") as f:
        return "load average " + " ".join(f.read().split()[:3])


def main() -> None:
    runs = RUNS_PER_DAY * DAYS * TEAMS * PER_TEAM
    print(
        f"KPI pages benchmark: {TEAMS * PER_TEAM} agents in {TEAMS} teams, {RUNS_PER_DAY} runs "
        f"an agent a day for {DAYS} days ({runs:,} runs), {EVENTS:,} audit events; {uptime()}",
        flush=True,
    )
    from django.conf import settings

    url = reuse() if REUSE else database()
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client

    from agents.models import Agent, Run

    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
    if REUSE:
        print("  reusing the kept history (BENCH_KPIS_REUSE=1)")
        users = get_user_model().objects
        supervisor = users.get(username="kpi-supervisor")
        one = users.get(username="kpi-supervisor-one")
        compliance = users.get(username="kpi-compliance")
        agents = list(Agent.objects.filter(slug__startswith="kpi-").order_by("slug"))
        # The hours that closed since, rolled up as the beat timer would have.
        from agents.rollup import kpi_rollup

        began = time.perf_counter()
        rolled = kpi_rollup()
        print(
            f"  rollup caught up: {rolled.hours:,} hours, {rolled.written:,} rows, "
            f"{rolled.open:,} agent hours open, in {time.perf_counter() - began:.1f} s"
        )
    else:
        began = time.perf_counter()
        history = build_history(log=print)
        print(
            f"  history: {history.runs:,} runs in {time.perf_counter() - began:.0f} s", flush=True
        )
        agents = history.agents
        # The trail first: the role grants write events, which the sequencer would chain
        # while the loader writes the chain head.
        if EVENTS:
            from bench.audit import AgentRef, load

            refs = [
                AgentRef(a.pk, a.slug, a.team_id, KINDS[i // PER_TEAM])
                for i, a in enumerate(agents)
            ]
            began = time.perf_counter()
            loaded = load(url, refs)
            print(f"  events: {loaded.rows:,} in {time.perf_counter() - began:.0f} s", flush=True)
        supervisor, one, compliance = people(history.teams)
        began = time.perf_counter()
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")
        print(f"  VACUUM ANALYZE in {time.perf_counter() - began:.0f} s", flush=True)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_size_pretty(pg_database_size(current_database()))")
        (size,) = cursor.fetchone()
    print(f"  database: {size}; {uptime()}", flush=True)
    # The first agent of the last team: in the supervisor's teams, with a canary.
    agent = agents[-PER_TEAM]
    run = Run.objects.filter(agent=agent, status=Run.Status.SUCCEEDED).order_by("-pk").first()
    assert run is not None
    pages = {
        **{
            f"agent KPIs {w}": f"/agents/{agent.slug}/kpis/?window={w}"
            for w in ("24h", "7d", "30d")
        },
        **{f"fleet KPIs {w}": f"/kpis/?window={w}" for w in ("24h", "7d", "30d")},
        "overview": "/",
        "queue (first page)": "/approvals/",
        "agent": f"/agents/{agent.slug}/",
        "run": f"/runs/{run.pk}/",
    }
    if ONLY:
        pages = {name: url for name, url in pages.items() if name.startswith(tuple(ONLY))}
    # No query per agent: the fleet's KPIs cost a supervisor of one team (10 agents) the
    # queries they cost a supervisor of five (50).
    if any(name.startswith("fleet") for name in pages):
        counts = {}
        for who, user in (("one team", one), ("five teams", supervisor)):
            client = Client()
            client.force_login(user)
            counts[who] = [query_count(client, f"/kpis/?window={w}") for w in ("24h", "7d", "30d")]
        print(f"  fleet KPI queries, supervisor of one team / of five: {counts}")
        assert counts["one team"] == counts["five teams"], counts
    from bench.common import page_floors, pct

    trivial, _, _, _, _ = measure(Client(), "/login/", SAMPLES)
    floor, rows = page_floors(trivial, SAMPLES)
    slowest = []
    missed = []
    for who, user in (("supervisor (5 teams)", supervisor), ("compliance (all)", compliance)):
        client = Client()
        client.force_login(user)
        for name, page in pages.items():
            times, queries, sql_share, what, cpu = measure(client, page, SAMPLES)
            p95 = pct(times, 0.95)
            verdict = "met" if p95 <= BUDGET_P95 else "NOT MET"
            if p95 > BUDGET_P95:
                missed.append(f"{name}, {who}")
            rows.append(
                (
                    f"{name}, {who}",
                    f"{pct(times, 0.5) * 1000:.1f} / {p95 * 1000:.1f} ms",
                    f"p95 {p95 / floor:.1f}x the login page; {len(times)} samples; "
                    f"CPU p50 {cpu * 1000:.1f} ms; "
                    f"{queries} queries, SQL {sql_share:.0%}; budget 100 ms: {verdict}",
                )
            )
            slowest.append(f"  {name}, {who}: slowest query {what}")
            print(f"  {rows[-1][0]}: {rows[-1][1]} ({uptime()})", flush=True)
            if "KPIs" in name:
                rows.append(read_anew(client, page, name, who, floor))
                print(f"  {rows[-1][0]}: {rows[-1][1]}", flush=True)
    print(f"  p50 / p95 server time (test Client, in-process); {uptime()}:")
    from bench.common import report

    report(rows)
    print("\n".join(slowest))
    verdict = "met by every page" if not missed else "NOT MET by " + "; ".join(missed)
    print(f"  budget p95 100 ms: {verdict}")


if __name__ == "__main__":
    main()
