"""Audit trail benchmark (DESIGN sections 7 and 11): ten million events, loaded with COPY
(bodies built here in the canonical form of format 1, which Python's C JSON encoder writes
ten times faster than RFC 8785 and every verifier reads alike; hashes chained here, a
checkpoint signed every tenth of the trail with the real `checkpoint_sign`), then the three
audit budgets:

- a filtered page (the real AuditFilter form and `audit_page`, a compliance officer), first
  page and page 10,000 (or the filter's last page): p95 <= 20 ms, deep <= 1.5x first;
  beside it, the page's own SQL run raw on the same connection;
- export (`export_plan` + `jsonl_chunks`, consumed in-process): >= 150k rows/s, memory
  flat; beside it, the floor: the whole table through `COPY ... TO STDOUT` and psycopg;
- verification (`chain_verify`): >= 200k rows/s; and the offline verifier on a 1M-row
  export;
- the scheduled verification (`chain_verify_scheduled`, what beat runs: on from the last
  signed outcome) after 10,000 new events: < 1 s; beside it, a full run from the same run.

Run: make bench. BENCH_AUDIT_ROWS overrides the 10,000,000 events (e.g. 200000 for a quick
run); BENCH_AUDIT_PARTITION_ROWS the 10,000,000 events a partition of the trail;
BENCH_AUDIT_SAMPLES the 200 samples a page; BENCH_KEEP=1 keeps the database
`baton_bench_audit` (dropped otherwise) and BENCH_AUDIT_REUSE=1 measures a kept one again
without loading it (and keeps it). BENCH_AUDIT_DB names the database (and its work
folder) instead of `baton_bench_audit`, so two runs on one machine do not share one.
BENCH_AUDIT_ONLY measures only the parts named (comma-separated: pages, search, export,
verify, scheduled), e.g. the scheduled verification again on a kept trail.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from hashlib import sha256
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

from bench.common import chained_all, pct, report, sequencer_start, use_bench_database

ROWS = int(os.environ.get("BENCH_AUDIT_ROWS", "10000000"))
# Events a range partition of the trail (audit/partitions.py has the production size).
PARTITION_ROWS = int(os.environ.get("BENCH_AUDIT_PARTITION_ROWS", "10000000"))
KEEP = os.environ.get("BENCH_KEEP") == "1"
REUSE = os.environ.get("BENCH_AUDIT_REUSE") == "1"
SAMPLES = int(os.environ.get("BENCH_AUDIT_SAMPLES", "200"))
DB_NAME = os.environ.get("BENCH_AUDIT_DB", "baton_bench_audit")
PARTS = ("pages", "search", "export", "verify", "scheduled")
ONLY = [p for p in os.environ.get("BENCH_AUDIT_ONLY", "").split(",") if p] or list(PARTS)
assert set(ONLY) <= set(PARTS), f"BENCH_AUDIT_ONLY: one or more of {', '.join(PARTS)}"
WORK = Path(tempfile.gettempdir()) / DB_NAME  # the signing key and the checkpoint file
CHECKPOINTS = 10  # one signed checkpoint every tenth of the trail, the last at the head
DEEP_PAGE = 10_000
PAGE = 50
SAMPLE_SECONDS = 30.0  # a filter's samples stop early after this long (the text search)
START = datetime(2026, 10, 23, tzinfo=UTC)
SPAN = timedelta(days=30)
GENERATED_AT = "2026-11-22T00:00:00.000000Z"

PAGE_P95_BUDGET = 0.020
DEEP_RATIO_BUDGET = 1.5
EXPORT_BUDGET = 150_000
VERIFY_BUDGET = 200_000

# The indexes on the generated columns (audit/models.py), dropped for the load and built
# after it; the primary key and the unique seq stay (both are appended in order).
LOAD_INDEXES = (
    "audit_agent_seq",
    "audit_team_seq",
    "audit_run_seq",
    "audit_verb_seq",
    "audit_actor_seq",
    "audit_occurred",
)


# --- the trail ------------------------------------------------------------------------

TEAMS = {
    "payments": (
        ["payout-runner", "refund-desk", "ledger-reconciler", "invoice-clerk", "fx-hedger"],
        ["payments.payout", "payments.refund", "ledger.read", "invoices.create", "email.send"],
    ),
    "support": (
        ["triage", "reply-drafter", "escalations", "refund-helper", "survey"],
        ["tickets.reply", "tickets.close", "crm.lookup", "payments.refund", "email.send"],
    ),
    "growth": (
        ["ads-tuner", "campaigns", "segmenter", "seo-writer", "pricing-probe"],
        ["ads.budget_set", "email.campaign_send", "crm.segment", "web.fetch", "cms.publish"],
    ),
    "data": (
        ["etl-nightly", "report-builder", "anomaly-watch", "exporter", "quality-check"],
        ["warehouse.query", "warehouse.export", "s3.put", "web.fetch", "email.send"],
    ),
    "platform": (
        ["autoscaler", "deployer", "oncall-helper", "dns-keeper", "merge-bot"],
        ["k8s.scale", "k8s.rollout", "pagerduty.ack", "dns.update", "github.merge"],
    ),
}
AGENTS_PER_TEAM = 10
USERS = [
    "alice.martin",
    "bob.okafor",
    "chloé.durand",
    "dmitri.ivanov",
    "eva.schmidt",
    "farid.haddad",
    "grace.lee",
    "hiro.tanaka",
    "ines.garcia",
    "jonas.berg",
    "kemi.adeyemi",
    "lars.nilsson",
    "maría.lópez",
    "noah.cohen",
    "olga.petrova",
    "paul.meyer",
    "qi.zhang",
    "rosa.bianchi",
    "sam.taylor",
    "tomás.silva",
    "uma.patel",
    "victor.dubois",
    "wen.liu",
    "yusuf.demir",
]
USER_ID0 = 1001
MODELS = ["gpt-4.1-mini", "claude-sonnet-4", "mistral-large", "llama-3.3-70b"]
PURPOSES = ["plan", "classify", "summarize", "draft reply", "extract fields", "decide next step"]
REASONS = [
    "amount above the 1 000 € limit",
    'payee "ACME Ltd" is not on the allow-list',
    "Zahlung bereits erfolgt — duplicate",
    "outside the change window (Fri 16:00–Mon 08:00)",
    "needs a second pair of eyes: new counterparty",
    "customer asked us to hold off",
    "looks fine",
    "ok, checked against the invoice",
    "réclamation en cours, on attend",
    "budget for Q4 already spent",
]
ERRORS = [
    "TimeoutError: upstream did not answer in 30 s",
    "HTTPError: 502 Bad Gateway",
    "ValueError: unknown account 'acct_9z'",
    "PermissionError: token expired",
]
PROMPT_SENTENCES = [
    "You are the {team} team's assistant; answer in JSON.",
    "Read the ticket below and decide whether a refund is due under policy R-12.",
    "The customer writes: “I was charged twice for order {ref}, please fix this.”",
    "Previous messages in this thread are attached, newest last.",
    "Only propose a payout when the invoice and the purchase order agree.",
    "List the steps you would take, then the first tool call to make.",
    "Kunde meldet: Lieferung unvollständig, bitte Gutschrift prüfen.",
    "Keep the reply under 120 words and do not promise dates.",
    "Summarise last night's load: rows in, rows rejected, slowest step.",
    "If anything looks unusual, say why in one sentence.",
    "Context: account {ref} has had 3 disputes in 90 days.",
    "Le client souhaite annuler sa commande avant l'expédition.",
]
ANSWERS = [
    {"decision": "pay", "reason": "invoice and PO agree"},
    {"decision": "hold", "reason": "new counterparty, amount above the usual"},
    {
        "subject": "Your refund",
        "body": "We have refunded the duplicate charge; it shows in 3–5 days.",
    },
    {"steps": ["read stock", "plan quantity", "create PO"], "next": "inventory.stock_level"},
    {"summary": "1.2M rows in, 0 rejected; the slowest step was the dedupe (4 min)."},
]
RATIONALES = [
    "The ticket is a refund request under the limit; reply and refund.",
    "Two invoices match the payout; pick the newer one.",
    "Traffic is up 40 % since 09:00; scale out by two replicas.",
    "Nothing unusual in last night's load.",
    "Le client demande un remboursement partiel.",
]


def _encoder() -> Callable[[Any], str]:
    return json.JSONEncoder(
        sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode


@dataclass(frozen=True)
class AgentRef:
    id: int
    slug: str
    team_id: int
    team: str


Event = tuple[str, str, str, int | None, int | None, str, str, str, str]
# (actor_id json, actor_label json, actor_type, agent_id, run_id, subject_id, subject_type,
#  verb, payload json); the team and the time are added by the writer.
FINISHED: Event = ("", "", "", None, None, "", "", "", "")  # a run has no more events
# (a run that yields None waits, for an approval, while the others go on)


class Trail:
    """Runs of agents interleaved as they would be with many in flight: each event advances
    one of ACTIVE runs, chosen at random; a run waiting for an approval yields nothing for a
    while. Agents and people are busy unevenly (Zipf-like weights)."""

    ACTIVE = 64

    def __init__(self, agents: list[AgentRef], seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.enc = _encoder()
        self.agents = agents
        self.agent_weights = [1 / (r + 1) ** 0.7 for r in range(len(agents))]
        self.users = [(str(USER_ID0 + i), self.enc(u)) for i, u in enumerate(USERS)]
        self.user_weights = [1 / (r + 1) ** 0.8 for r in range(len(USERS))]
        self.system = ("null", self.enc("baton"))
        self.next_run = 1
        self.next_approval = 1
        self.next_version = 1

    def _user(self) -> tuple[str, str]:
        return self.rng.choices(self.users, self.user_weights)[0]

    def _args(self, tool: str) -> dict[str, Any]:
        rng = self.rng
        if tool.startswith("payments."):
            return {
                "amount": round(rng.lognormvariate(5.5, 1.3), 2),
                "currency": rng.choice(["EUR", "EUR", "USD", "GBP"]),
                "payee": f"acct_{rng.randrange(1, 20000):05d}",
                "reference": f"INV-{rng.randrange(100000, 999999)}",
            }
        if tool.startswith("tickets.") or tool.startswith("crm."):
            return {"ticket": rng.randrange(1, 500000), "text": rng.choice(RATIONALES)}
        if tool.startswith("k8s."):
            return {
                "deployment": rng.choice(["api", "web", "worker"]),
                "replicas": rng.randint(2, 12),
            }
        if tool.startswith("email."):
            return {"to": f"customer{rng.randrange(1, 90000)}@example.com", "template": "notice"}
        return {
            "target": f"{tool.split('.')[0]}-{rng.randrange(1, 400)}",
            "limit": rng.randint(1, 500),
        }

    def _prompt(self, team: str) -> str:
        rng = self.rng
        text = " ".join(rng.sample(PROMPT_SENTENCES, rng.randint(2, 8)))
        return text.replace("{team}", team).replace("{ref}", str(rng.randrange(10**6)))

    def runs(self) -> Iterator[Iterator[Event | None]]:
        while True:
            agent = self.rng.choices(self.agents, self.agent_weights)[0]
            run_id = self.next_run
            self.next_run += 1
            yield self._run(agent, run_id)

    def _run(self, agent: AgentRef, run_id: int) -> Iterator[Event | None]:
        rng, enc = self.rng, self.enc
        me = (str(agent.id), enc(agent.slug))
        rid = str(run_id)
        tools = TEAMS[agent.team][1]

        def action(verb: str, step: int, payload: dict[str, Any]) -> Event:
            return (
                *me,
                "agent",
                agent.id,
                run_id,
                f"{run_id}/{step}",
                "action",
                verb,
                enc(payload),
            )

        def about_run(actor: tuple[str, str], kind: str, verb: str, payload: Any) -> Event:
            return (*actor, kind, agent.id, run_id, rid, "run", verb, enc(payload))

        if rng.random() < 0.7:
            launcher, kind = self._user(), "user"
        else:
            launcher, kind = self.system, "system"
        task = {"task": rng.choice(PURPOSES), "ref": rng.randrange(1, 10**6)}
        yield about_run(launcher, kind, "run.queued", {"input": task, "version": 3})
        yield about_run(self.system, "system", "run.started", {"attempt": 1})
        attempt = 1
        for step in range(1, rng.randint(2, 10) + 1):
            if rng.random() < 0.35:
                model = rng.choice(MODELS)
                tokens_in, tokens_out = rng.randint(200, 9000), rng.randint(20, 1200)
                yield action(
                    "model.called",
                    step,
                    {
                        "seq": step,
                        "tool": model,
                        "status": "succeeded",
                        "model": model,
                        "purpose": rng.choice(PURPOSES),
                        "tokens_in": tokens_in,
                        "tokens_out": tokens_out,
                        "cost_eur": round((tokens_in + 4 * tokens_out) * 2e-6, 6),
                        "rationale": rng.choice(RATIONALES),
                        "prompt": self._prompt(agent.team),
                        "output": rng.choice(ANSWERS),
                    },
                )
                continue
            tool = rng.choice(tools)
            args = self._args(tool)
            rule = {
                "index": rng.randint(0, 6),
                "tool": tool.split(".")[0] + ".*",
                "effect": "allow",
            }
            verdict = rng.random()
            if verdict < 0.05:
                rule = {**rule, "effect": "deny", "reason": rng.choice(REASONS)}
                yield action(
                    "action.denied",
                    step,
                    {"seq": step, "tool": tool, "status": "denied", "args": args, "rule": rule},
                )
                continue
            if verdict < 0.15:
                rule = {**rule, "effect": "approve", "approvals": 1, "timeout": 3600}
                rule["on_timeout"] = "reject"
                held = {"seq": step, "tool": tool, "status": "held", "args": args, "rule": rule}
                yield action("action.held", step, held)
                approval = str(self.next_approval)
                self.next_approval += 1
                requested = {"tool": tool, "args": args, "kind": "approve", "required": 1}
                requested["rule"] = rule
                yield (
                    *me,
                    "agent",
                    agent.id,
                    run_id,
                    approval,
                    "approval",
                    "approval.requested",
                    enc(requested),
                )
                yield about_run(me, "agent", "run.waiting", {"why": "an action waits for approval"})
                for _ in range(rng.randint(2, 40)):
                    yield None  # others go on while it waits
                decided = rng.random()
                if decided < 0.05:
                    status, verb, who, who_kind = (
                        "expired",
                        "approval.expired",
                        self.system,
                        "system",
                    )
                    decision: dict[str, Any] = {"reason": "no decision within 3600 s"}
                else:
                    approve = decided < 0.8
                    status = "approved" if approve else "rejected"
                    verb = f"approval.{status}"
                    who, who_kind = self._user(), "user"
                    decision = {
                        "verdict": "approve" if approve else "reject",
                        "comment": rng.choice(REASONS),
                        "args": args,
                        "edited": False,
                        "approvals": 1 if approve else 0,
                        "required": 1,
                    }
                yield (*who, who_kind, agent.id, run_id, approval, "approval", verb, enc(decision))
                why = {"why": f"approval {approval} {status}"}
                yield about_run(self.system, "system", "run.queued", why)
                attempt += 1
                yield about_run(self.system, "system", "run.started", {"attempt": attempt})
                if status != "approved":
                    continue
            started = {"seq": step, "tool": tool, "status": "started", "args": args, "rule": rule}
            started["attempt"] = 1
            yield action("action.allowed", step, started)
            if rng.random() < 0.01:
                error = rng.choice(ERRORS)
                failed = {"seq": step, "tool": tool, "status": "failed", "error": error}
                yield action("action.failed", step, {**failed, "result": None})
                retried = {**started, "attempt": 2}
                yield action("action.retried", step, retried)
            result = {"ok": True, "id": f"{tool.split('.')[1]}_{rng.randrange(16**8):08x}"}
            done = {"seq": step, "tool": tool, "status": "succeeded", "result": result, "error": ""}
            yield action("action.succeeded", step, done)
        if rng.random() < 0.93:
            output = {"done": True, "steps": step, "answer": rng.choice(ANSWERS)}
            yield about_run(me, "agent", "run.succeeded", {"output": output})
        else:
            yield about_run(me, "agent", "run.failed", {"error": rng.choice(ERRORS)})

    def admin(self) -> Event:
        """Now and then, something people do outside runs."""
        rng, enc = self.rng, self.enc
        agent = rng.choice(self.agents)
        who = self._user()
        kind = rng.random()
        if kind < 0.4:
            self.next_version += 1
            policy = {"rules": [{"tool": t, "effect": "allow"} for t in TEAMS[agent.team][1][:3]]}
            payload = {"number": self.next_version, "program": f"{agent.team}.main"}
            payload["policy"] = policy
            return (
                *who,
                "user",
                agent.id,
                None,
                str(self.next_version),
                "version",
                "version.created",
                enc(payload),
            )
        if kind < 0.7:
            payload = {"number": self.next_version, "reason": rng.choice(REASONS)}
            return (
                *who,
                "user",
                agent.id,
                None,
                str(self.next_version),
                "version",
                "policy.published",
                enc(payload),
            )
        if kind < 0.8:
            payload = {"user": rng.choice(USERS), "role": "Supervisor", "agent": agent.slug}
            return (
                *who,
                "user",
                agent.id,
                None,
                str(USER_ID0 + rng.randrange(24)),
                "user",
                "grant.added",
                enc(payload),
            )
        if kind < 0.9:
            payload = {"filter": {"agent": agent.slug}, "format": rng.choice(["jsonl", "csv"])}
            return (
                *who,
                "user",
                None,
                None,
                f"export-{rng.randrange(10**6)}",
                "export",
                "audit.exported",
                enc(payload),
            )
        verb = rng.choice(["killswitch.engaged", "killswitch.released", "apikey.created"])
        payload = {"target": f"agent:{agent.slug}", "mode": "halt", "reason": rng.choice(REASONS)}
        return (
            *who,
            "user",
            agent.id,
            None,
            str(rng.randrange(1, 5000)),
            "switch",
            verb,
            enc(payload),
        )


@dataclass
class Loaded:
    rows: int
    seconds: float
    index_seconds: dict[str, float]
    vacuum_seconds: float
    verbs: Counter[str]
    first_slice: int  # the seq of the first signed checkpoint (the offline verifier's slice)


def _clock(rows: int) -> Iterator[str]:
    """Increasing event times over SPAN, text as audit.chain writes them."""
    rng = random.Random(11)
    step = SPAN / timedelta(microseconds=1) / rows
    t = int(START.timestamp() * 1_000_000)
    second, prefix = -1, ""
    while True:
        t += 1 + int(rng.expovariate(1 / step))
        if t // 1_000_000 != second:
            second = t // 1_000_000
            prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        yield f"{prefix}.{t % 1_000_000:06d}Z"


def _partitions_laid(con: Any) -> None:
    """The empty trail's range partitions laid out again in ranges of PARTITION_ROWS
    (the migration made ranges of audit.partitions.PARTITION_SIZE)."""
    from audit.partitions import PARTITION_SIZE

    if PARTITION_ROWS == PARTITION_SIZE:
        return
    ranges = con.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'audit_auditevent'::regclass "
        "AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT'"
    ).fetchall()
    for (name,) in ranges:
        con.execute(f'ALTER TABLE audit_auditevent DETACH PARTITION "{name}"')
        con.execute(f'DROP TABLE "{name}"')
    con.execute("SELECT baton_audit_partitions_ahead(%s)", [PARTITION_ROWS])


def load(url: str, agents: list[AgentRef]) -> Loaded:
    import psycopg
    from django.db import close_old_connections

    from audit.chain import canonical_content_v1, canonical_json_v1, chain_hash
    from audit.signing import checkpoint_sign

    con = psycopg.connect(url, autocommit=True)
    _partitions_laid(con)
    definitions: dict[str, str] = dict(
        con.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'audit_auditevent' "
            "AND indexname = ANY(%s)",
            [list(LOAD_INDEXES)],
        ).fetchall()
    )
    for name, definition in definitions.items():
        con.execute(f'DROP INDEX "{name}"')
        # A partitioned index reads "ON ONLY" (the parent alone); built again on the parent,
        # it is built on every partition.
        definitions[name] = definition.replace(" ON ONLY ", " ON ")
    head = con.execute("SELECT seq, hash FROM audit_chainhead WHERE id = 1").fetchone()
    assert head is not None
    seq, prev = head
    teams = {a.id: ("null" if a.team_id is None else str(a.team_id)) for a in agents}
    trail = Trail(agents)
    runs = trail.runs()
    active = [next(runs) for _ in range(Trail.ACTIVE)]
    clock = _clock(ROWS)
    verbs: Counter[str] = Counter()
    rng = random.Random(3)
    per_slice = math.ceil(ROWS / CHECKPOINTS)
    started = time.perf_counter()
    written = 0
    first_slice = 0
    while written < ROWS:
        target = min(ROWS, written + per_slice)
        # The ranges this slice needs, made ahead as the checkpoint task makes them.
        con.execute(
            "SELECT baton_audit_partitions_ahead(%s, %s)",
            [PARTITION_ROWS, seq + target - written],
        )
        with con.transaction(), con.cursor() as cur:
            with cur.copy("COPY audit_auditevent (seq, body, prev_hash, hash) FROM STDIN") as copy:
                lines: list[str] = []
                while written < target:
                    if rng.random() < 0.003:
                        event: Event | None = trail.admin()
                    else:
                        i = rng.randrange(Trail.ACTIVE)
                        event = next(active[i], FINISHED)
                        if event is FINISHED:
                            active[i] = next(runs)
                            continue
                    if event is None:  # a run waiting for its approval
                        continue
                    (
                        actor_id,
                        label,
                        actor_type,
                        agent,
                        run,
                        subject,
                        subject_type,
                        verb,
                        payload,
                    ) = event
                    seq += 1
                    written += 1
                    agent_id = "null" if agent is None else agent
                    team_id = "null" if agent is None else teams[agent]
                    body = (
                        f'{{"actor_id":{actor_id},"actor_label":{label},"actor_type":"{actor_type}",'
                        f'"agent_id":{agent_id},"occurred_at":"{next(clock)}",'
                        f'"payload":{payload},"run_id":{"null" if run is None else run},'
                        f'"subject_id":"{subject}","subject_type":"{subject_type}",'
                        f'"team_id":{team_id},"verb":"{verb}"}}'
                    )
                    raw = body.encode()
                    link = sha256(f"{prev}\n{seq}\n{sha256(raw).hexdigest()}".encode()).hexdigest()
                    if seq % 9973 == 1:  # the hand-built bodies are the canonical form (1)
                        assert canonical_json_v1(json.loads(body)) == raw, body
                        content = json.loads(body)
                        assert chain_hash(prev, seq, canonical_content_v1(content)) == link
                    verbs[verb] += 1
                    if "\\" in body:  # COPY's text format escapes the backslash
                        body = body.replace("\\", "\\\\")
                    lines.append(f"{seq}\t{body}\t{prev}\t{link}\n")
                    prev = link
                    if len(lines) >= 5000:
                        copy.write("".join(lines))
                        lines = []
                if lines:
                    copy.write("".join(lines))
            cur.execute("UPDATE audit_chainhead SET seq = %s, hash = %s WHERE id = 1", [seq, prev])
        close_old_connections()
        checkpoint = checkpoint_sign()
        assert checkpoint is not None and checkpoint.seq == seq, "no signing key"
        first_slice = first_slice or seq
        elapsed = time.perf_counter() - started
        print(f"    {written:>11,} events  {written / elapsed:>9,.0f} events/s", flush=True)
    seconds = time.perf_counter() - started
    if written >= 100_000:  # every kind of run made it into the trail
        assert verbs["approval.rejected"] and verbs["approval.approved"], verbs
    index_seconds = {}
    con.execute("SET maintenance_work_mem = '1GB'")
    for name, definition in definitions.items():
        began = time.perf_counter()
        con.execute(definition)
        index_seconds[name] = time.perf_counter() - began
    began = time.perf_counter()
    con.execute("VACUUM (ANALYZE) audit_auditevent")
    vacuum = time.perf_counter() - began
    con.close()
    return Loaded(written, seconds, index_seconds, vacuum, verbs, first_slice)


def ingest_floor(url: str, rows: int) -> list[tuple[str, float]]:
    """COPY the first `rows` events, as loaded, into a table like the trail's without its
    indexes or triggers, with and without the generated columns: what the columns cost."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as con, con.cursor() as cur:
        data = bytearray()
        query = "SELECT seq, body, prev_hash, hash FROM audit_auditevent WHERE seq <= %s"
        with cur.copy(f"COPY ({query}) TO STDOUT", [rows]) as copy:
            for block in copy:
                data += block
        tables = [
            ("plain", "(seq bigint, body text, prev_hash varchar(64), hash varchar(64))"),
            ("generated", "(LIKE audit_auditevent INCLUDING ALL EXCLUDING INDEXES)"),
        ]
        rates = []
        for name, shape in tables:
            cur.execute(f"CREATE TEMP TABLE bench_ingest_{name} {shape}")
            began = time.perf_counter()
            with cur.copy(
                f"COPY bench_ingest_{name} (seq, body, prev_hash, hash) FROM STDIN"
            ) as copy:
                for i in range(0, len(data), 1 << 20):
                    copy.write(data[i : i + (1 << 20)])
            rates.append((name, rows / (time.perf_counter() - began)))
            cur.execute(f"DROP TABLE bench_ingest_{name}")
    return rates


# --- memory ---------------------------------------------------------------------------


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak_rss() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS


def mb(kb: float) -> str:
    return f"{kb / 1024:,.1f} MB" if kb >= 1024 else f"{kb:,.0f} kB"


@dataclass
class Streamed:
    rows: int
    bytes: int
    seconds: float
    first_chunk: float  # the header
    first_rows: float  # the first chunk of events
    rss_growth_kb: int
    traced_peak: int | None = None

    @property
    def rate(self) -> float:
        return self.rows / self.seconds


def stream(rows: int, make: Callable[[], Iterator[bytes]], *, trace: bool = False) -> Streamed:
    _reset_peak_rss()
    rss0 = _status_kb("VmRSS")
    if trace:
        tracemalloc.start()
    began = time.perf_counter()
    first_chunk = first_rows = 0.0
    size = 0
    for n, chunk in enumerate(make()):
        if n == 0:
            first_chunk = time.perf_counter() - began
        elif n == 1:
            first_rows = time.perf_counter() - began
        size += len(chunk)
    seconds = time.perf_counter() - began
    peak = None
    if trace:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return Streamed(rows, size, seconds, first_chunk, first_rows, _status_kb("VmHWM") - rss0, peak)


# --- pages ----------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    data: list[dict[str, str]]  # cycled over the samples (one, or one per sample)
    note: str = ""


def _cleaned(user: Any, data: dict[str, str]) -> dict[str, Any]:
    from audit.filters import AuditFilter

    form = AuditFilter(data, user=user)
    assert form.is_valid(), form.errors
    return form.cleaned_data


def deep_cursors(user: Any, data: dict[str, str], count: int) -> tuple[int, int, list[int]]:
    """The `before` cursors of up to `count` pages ending at page DEEP_PAGE (or at the
    filter's last page), found with SQL in the filter's own order; keyset cost does not
    depend on how the cursor was reached. Returns (pages in all, first page, cursors)."""
    from audit.selectors import audit_query

    seqs = audit_query(user, _cleaned(user, data)).values_list("seq", flat=True)
    pages = max(1, math.ceil(seqs.count() / PAGE))
    last = min(pages, DEEP_PAGE)
    first = max(2, last - count + 1)
    if last < 2:
        return pages, 1, []
    # Page p starts after the row at offset (p - 1) * PAGE - 1: its cursor is that row's seq.
    window = list(seqs[(first - 1) * PAGE - 1 : (last - 1) * PAGE])
    return pages, first, window[::PAGE]


def time_pages(
    user: Any, datas: list[dict[str, str]], cursors: list[int | None]
) -> tuple[list[float], list[float], int]:
    """Form + selector per page, and the page's main SQL run raw on the same connection
    (the floor). Returns (page timings, raw timings, rows on the last page)."""
    from django.db import connection
    from django.db.models import Q

    from audit.selectors import audit_page, events_for_user, filter_q

    timings: list[float] = []
    raw: list[float] = []
    rows = 0
    n = max(len(datas), len(cursors))
    limit = time.perf_counter() + SAMPLE_SECONDS
    for i in range(SAMPLES):
        data = dict(datas[i % len(datas)])
        cursor = cursors[i % len(cursors)]
        if cursor is not None:
            data["before"] = str(cursor)
        began = time.perf_counter()
        cleaned = _cleaned(user, data)
        page = audit_page(user, cleaned)
        timings.append(time.perf_counter() - began)
        rows = len(page.rows)
        before = Q(seq__lt=cursor) if cursor is not None else Q()
        query = events_for_user(user).filter(filter_q(cleaned) & before)[: PAGE + 1]
        sql, params = query.query.sql_with_params()
        with connection.cursor() as c:
            began = time.perf_counter()
            c.execute(sql, params)
            c.fetchall()
            raw.append(time.perf_counter() - began)
        if i + 1 >= min(n, 3) and time.perf_counter() > limit:
            break
    return timings, raw, rows


def explain(user: Any, data: dict[str, str], cursor: int | None) -> str:
    from django.db import connection
    from django.db.models import Q

    from audit.selectors import events_for_user, filter_q

    cleaned = _cleaned(user, data)
    before = Q(seq__lt=cursor) if cursor is not None else Q()
    query = events_for_user(user).filter(filter_q(cleaned) & before)[: PAGE + 1]
    sql, params = query.query.sql_with_params()
    with connection.cursor() as c:
        c.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
        return "\n".join("      " + r[0] for r in c.fetchall())


def pages(user: Any, cases: list[Case]) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    plans: list[str] = []
    for case in cases:
        if len(case.data) == 1:
            total, first_deep, cursors = deep_cursors(user, case.data[0], SAMPLES)
        else:
            total, first_deep, cursors = 1, 1, []
        first, first_raw, _ = time_pages(user, case.data, [None])
        f50, f95 = pct(first, 0.5), pct(first, 0.95)
        verdict = "met" if f95 <= PAGE_P95_BUDGET else "NOT MET"
        rows.append(
            (
                f"{case.name}: first page",
                f"p50 {f50 * 1000:.2f} ms",
                f"p95 {f95 * 1000:.2f} ms = {f95 / PAGE_P95_BUDGET:.2f}x budget 20 ms ({verdict}); "
                f"raw SQL p50 {pct(first_raw, 0.5) * 1000:.2f} ms "
                f"(page {f50 / pct(first_raw, 0.5):.1f}x); n={len(first)} {case.note}",
            )
        )
        if f95 > PAGE_P95_BUDGET:
            plans.append(f"    {case.name}, first page:\n" + explain(user, case.data[0], None))
        if not cursors:
            rows.append((f"{case.name}: deep page", "—", f"one page only ({total} in all)"))
            continue
        deep, deep_raw, last_rows = time_pages(user, case.data, list(cursors))
        d50, d95 = pct(deep, 0.5), pct(deep, 0.95)
        last_page = first_deep + len(cursors) - 1
        where = (
            f"pages {first_deep:,}-{last_page:,}"
            if last_page == DEEP_PAGE
            else f"its last pages {first_deep:,}-{last_page:,} (only {total:,})"
        )
        ok = d95 <= PAGE_P95_BUDGET and d95 <= DEEP_RATIO_BUDGET * f95
        rows.append(
            (
                f"{case.name}: deep page",
                f"p50 {d50 * 1000:.2f} ms",
                f"p95 {d95 * 1000:.2f} ms = {d95 / PAGE_P95_BUDGET:.2f}x budget, "
                f"{d95 / f95:.2f}x first (budget 1.5x) ({'met' if ok else 'NOT MET'}); "
                f"raw SQL p50 {pct(deep_raw, 0.5) * 1000:.2f} ms; {where}; n={len(deep)}",
            )
        )
        if d95 > PAGE_P95_BUDGET:
            plans.append(
                f"    {case.name}, deep page, cursor {cursors[-1]}:\n"
                + explain(user, case.data[0], cursors[-1])
            )
    report(rows)
    for plan in plans:
        print(plan)
    return rows


# --- set-up ---------------------------------------------------------------------------


def _bench_url() -> str:
    url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
    return urlunparse(urlparse(url)._replace(path=f"/{DB_NAME}"))


def _existing() -> bool:
    import psycopg

    try:
        with psycopg.connect(_bench_url()) as con:
            row = con.execute("SELECT seq FROM audit_chainhead WHERE id = 1").fetchone()
    except psycopg.Error:
        return False
    return bool(row and row[0] > 0)


def setup() -> tuple[str, bool]:
    """Django on the benchmark's database; whether the trail is already there."""
    reuse = REUSE and _existing() and (WORK / "key.pem").exists()
    if not reuse:
        shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True, exist_ok=True)
    os.environ.pop("BATON_AUDIT_SIGNING_KEY", None)
    os.environ.pop("BATON_AUDIT_TRUSTED_KEYS_FILE", None)
    os.environ["BATON_AUDIT_SIGNING_KEY_FILE"] = str(WORK / "key.pem")
    os.environ["BATON_AUDIT_CHECKPOINT_DIR"] = str(WORK / "checkpoints")
    if reuse:
        os.environ["DATABASE_URL"] = _bench_url()
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
        import django

        django.setup()
        # The scheduled verification appends events: chained as in a deployment.
        sequencer_start(_bench_url())
        return _bench_url(), True
    return use_bench_database(DB_NAME), False


def people_and_agents() -> tuple[Any, list[AgentRef]]:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    from agents.models import Agent, Team
    from agents.roles import COMPLIANCE, roles_ensure

    roles_ensure()
    user, _ = get_user_model().objects.get_or_create(username="bench-compliance")
    user.groups.add(Group.objects.get(name=COMPLIANCE))
    ranked = []
    for t, (team_slug, (roles, _tools)) in enumerate(TEAMS.items()):
        team, _ = Team.objects.get_or_create(slug=team_slug, defaults={"name": team_slug.title()})
        for n in range(AGENTS_PER_TEAM):
            slug = f"{team_slug}-{roles[n % len(roles)]}-{n // len(roles) + 1}"
            agent, _ = Agent.objects.get_or_create(
                slug=slug, defaults={"name": slug.replace("-", " ").title(), "team": team}
            )
            ranked.append(((n, t), AgentRef(agent.pk, slug, team.pk, team_slug)))
    # Busiest first (the trail's weights follow this order), the teams interleaved.
    refs = [ref for _, ref in sorted(ranked, key=lambda r: r[0])]
    return get_user_model().objects.get(pk=user.pk), refs


def sizes(url: str) -> dict[str, int]:
    import psycopg

    with psycopg.connect(url) as con:
        # The trail's partitions summed (the partitioned parent itself holds nothing).
        row = con.execute(
            "SELECT sum(pg_table_size(relid)), sum(pg_indexes_size(relid)), "
            "pg_database_size(current_database()), count(*) FILTER (WHERE isleaf) "
            "FROM pg_partition_tree('audit_auditevent')"
        ).fetchone()
    assert row is not None
    return {"table": row[0], "indexes": row[1], "database": row[2], "partitions": row[3]}


def gb(n: float) -> str:
    return f"{n / 1024**3:,.2f} GB"


# --- main -----------------------------------------------------------------------------


def main() -> None:
    free = shutil.disk_usage("/work").free
    print(f"audit benchmark: {ROWS:,} events; {gb(free)} free on /work")
    url, reused = setup()
    from agents.models import Agent
    from audit.models import AuditEvent, ChainHead, Checkpoint

    user, agents = people_and_agents()
    if reused:
        print("  reusing the kept trail (BENCH_AUDIT_REUSE=1)")
        verbs: Counter[str] = Counter()
        first_slice = Checkpoint.objects.order_by("seq").values_list("seq", flat=True).first()
        assert first_slice is not None
    else:
        if free * 0.8 < ROWS * 1200:
            sys.exit(f"not enough disk for {ROWS:,} events (about {gb(ROWS * 1200)})")
        print("  loading (COPY, the generated-column indexes dropped and built after):")
        loaded = load(url, agents)
        verbs, first_slice = loaded.verbs, loaded.first_slice
        report(
            [
                ("generated and loaded", f"{loaded.rows:,}", f"in {loaded.seconds:,.1f} s"),
                ("  events/s (generation + COPY)", f"{loaded.rows / loaded.seconds:,.0f}", ""),
                *[
                    (f"  index {name}", f"{seconds:,.1f} s", "")
                    for name, seconds in loaded.index_seconds.items()
                ],
                ("  VACUUM (ANALYZE)", f"{loaded.vacuum_seconds:,.1f} s", ""),
            ]
        )
        sample = min(loaded.rows, 200_000)
        (_, plain), (_, generated) = ingest_floor(url, sample)
        report(
            [
                (
                    f"  COPY of {sample:,} events, no indexes",
                    f"{generated:,.0f} rows/s",
                    f"with the 10 generated columns; {plain:,.0f} rows/s without them "
                    f"({plain / generated:.1f}x)",
                ),
            ]
        )
    size = sizes(url)
    head = ChainHead.objects.get(pk=1)
    report(
        [
            ("events (chain head)", f"{head.seq:,}", f"{Checkpoint.objects.count()} checkpoints"),
            ("table (heap + TOAST)", gb(size["table"]), f"{size['table'] / head.seq:,.0f} B/event"),
            ("indexes", gb(size["indexes"]), f"{size['partitions']} partitions"),
            ("database", gb(size["database"]), ""),
        ]
    )
    if verbs:
        total = sum(verbs.values())
        print("  verbs: " + ", ".join(f"{v} {n / total:.1%}" for v, n in verbs.most_common()))

    # The filters' values: the busiest agent, team, actor; runs with many events.
    busiest = agents[0]
    team = busiest.team
    top_user = USERS[0]
    runs = list(
        AuditEvent.objects.filter(verb="run.succeeded")
        .order_by("-seq")
        .values_list("run_id", flat=True)[:SAMPLES]
    )
    since = (START + SPAN * 0.2).strftime("%Y-%m-%d")
    until = (START + SPAN * 0.7).strftime("%Y-%m-%d")
    assert Agent.objects.filter(slug=busiest.slug).exists()
    cases = [
        Case("agent", [{"agent": busiest.slug}]),
        Case("agent + decision=rejected", [{"agent": busiest.slug, "decision": "rejected"}]),
        Case("verb", [{"verb": "action.succeeded"}]),
        Case("team + time range", [{"team": team, "since": since, "until": until}]),
        Case("actor", [{"actor": top_user}]),
        Case("run", [{"run": str(r)} for r in runs], f"(over {len(runs)} runs)"),
        Case("no filter", [{}]),
    ]
    if "pages" in ONLY:
        print(
            f"\n  filtered pages ({SAMPLES} samples each; form + audit_page, compliance officer):"
        )
        pages(user, cases)
    if "search" in ONLY:
        print("\n  text search (body ILIKE: a scan, not index-backed):")
        pages(
            user,
            [
                Case("q=payments.payout", [{"q": "payments.payout"}]),
                Case("q=Zahlung (rarer)", [{"q": "Zahlung"}]),
            ],
        )
    if {"export", "verify", "scheduled"} & set(ONLY):
        print("\n  the floor: the whole trail through COPY TO STDOUT, raw:")
        floor = copy_floor(url, head.seq)
        report(
            [
                (
                    "floor: COPY TO STDOUT, raw",
                    f"{floor[0]:,.0f} rows/s",
                    f"{floor[1] / 1024**2:,.0f} MB/s",
                )
            ]
        )
    if "export" in ONLY:
        export_all(head.seq, busiest, first_slice, floor)
    if "verify" in ONLY:
        print("\n  verification:")
        verify(first_slice, floor[0])
    if "scheduled" in ONLY:
        print("\n  scheduled verification:")
        scheduled_verification(floor[0])

    if KEEP or REUSE:
        print(f"\n  kept {DB_NAME} and {WORK} (BENCH_KEEP=1 or BENCH_AUDIT_REUSE=1)")
    else:
        drop(url)


def export_all(head: int, busiest: AgentRef, first_slice: int, floor: tuple[float, float]) -> None:
    from django.db.models import Q

    print("\n  export (in-process):")
    everything = export_runs(head, Q(), "whole trail")
    agent_q = Q(agent_id=busiest.id)
    one_agent = export_runs(head, agent_q, f"one agent ({busiest.slug})")
    report([*export_rows(everything, floor[0]), *export_rows(one_agent, floor[0])])
    csv_rows(first_slice, Q(), "all shown")
    csv_rows(head, agent_q, f"one agent ({busiest.slug})")


def copy_floor(url: str, rows: int) -> tuple[float, float]:
    import psycopg

    with psycopg.connect(url) as con, con.cursor() as cur:
        began = time.perf_counter()
        size = 0
        with cur.copy(
            "COPY (SELECT seq, prev_hash, hash, body FROM audit_auditevent ORDER BY seq) TO STDOUT"
        ) as copy:
            for block in copy:
                size += len(block)
        seconds = time.perf_counter() - began
    return rows / seconds, size / seconds


def export_runs(head: int, matched: Any, label: str) -> tuple[str, Streamed, Streamed]:
    from audit.export import export_plan, jsonl_chunks

    def make() -> Iterator[bytes]:
        plan = export_plan(matched, up_to=head)
        return jsonl_chunks(plan, matched, by="bench", filters={}, generated_at=GENERATED_AT)

    plan = export_plan(matched, up_to=head)
    rows = plan.to_seq - plan.anchor_seq
    timed = stream(rows, make)
    traced = stream(rows, make, trace=True)
    return label, timed, traced


def export_rows(run: tuple[str, Streamed, Streamed], floor: float) -> list[tuple[str, str, str]]:
    label, timed, traced = run
    verdict = "met" if timed.rate >= EXPORT_BUDGET else "NOT MET"
    return [
        (
            f"jsonl export, {label}",
            f"{timed.rate:,.0f} rows/s",
            f"= {timed.rate / EXPORT_BUDGET:.2f}x budget 150k ({verdict}); "
            f"{timed.rate / floor:.2f}x floor; {timed.rows:,} rows, "
            f"{timed.bytes / 1024**3:.2f} GB in {timed.seconds:,.1f} s",
        ),
        (
            "  first chunk / first events",
            f"{timed.first_chunk * 1000:.1f} ms",
            f"{timed.first_rows * 1000:.1f} ms (plan included)",
        ),
        (
            "  memory",
            f"RSS +{mb(timed.rss_growth_kb)}",
            f"tracemalloc peak {mb((traced.traced_peak or 0) / 1024)} "
            f"(traced run {traced.rate:,.0f} rows/s)",
        ),
    ]


def csv_rows(up_to: int, matched: Any, label: str) -> None:
    from audit.export import csv_chunks, export_plan

    plan = export_plan(matched, up_to=up_to)
    rows = plan.to_seq - plan.anchor_seq

    def make() -> Iterator[bytes]:
        return csv_chunks(plan, matched, by="bench", filters={}, generated_at=GENERATED_AT)

    timed = stream(rows, make)
    verdict = "met" if timed.rate >= EXPORT_BUDGET else "NOT MET"
    report(
        [
            (
                f"csv export, #1..#{up_to:,}, {label}",
                f"{timed.rate:,.0f} rows/s",
                f"= {timed.rate / EXPORT_BUDGET:.2f}x budget 150k ({verdict}); "
                f"{timed.bytes / 1024**2:,.0f} MB in {timed.seconds:,.1f} s; "
                f"RSS +{mb(timed.rss_growth_kb)}",
            )
        ]
    )


def verify(first_slice: int, floor: float) -> None:
    from django.db.models import Q

    from audit import offline
    from audit.export import export_plan, jsonl_chunks
    from audit.models import ChainHead
    from audit.signing import key_id, signing_key
    from audit.verify import chain_verify

    head = ChainHead.objects.get(pk=1).seq
    _reset_peak_rss()
    rss0 = _status_kb("VmRSS")
    began = time.perf_counter()
    outcome = chain_verify()
    seconds = time.perf_counter() - began
    growth = _status_kb("VmHWM") - rss0
    assert outcome.ok and outcome.up_to_seq == head, outcome.message
    rate = head / seconds
    verdict = "met" if rate >= VERIFY_BUDGET else "NOT MET"
    rows = [
        (
            "chain_verify, whole trail",
            f"{rate:,.0f} rows/s",
            f"= {rate / VERIFY_BUDGET:.2f}x budget 200k ({verdict}); {rate / floor:.2f}x COPY "
            f"floor; {head:,} rows in {seconds:,.1f} s; RSS +{mb(growth)}; {outcome.message}",
        )
    ]

    # The offline verifier as an auditor runs it: over the export file, read line by line.
    plan = export_plan(Q(), up_to=first_slice)
    path = WORK / "export.jsonl"
    with path.open("wb") as out:
        for chunk in jsonl_chunks(plan, Q(), by="bench", filters={}, generated_at=GENERATED_AT):
            out.write(chunk)
    size = path.stat().st_size
    private = signing_key()
    assert private is not None
    keys = {key_id(private.public_key()): private.public_key()}
    _reset_peak_rss()
    rss0 = _status_kb("VmRSS")
    began = time.perf_counter()
    with path.open("rb") as export:
        result = offline.verify(export, keys)
    seconds = time.perf_counter() - began
    growth = _status_kb("VmHWM") - rss0
    assert result.ok, result.summary()
    n = plan.to_seq - plan.anchor_seq
    tracemalloc.start()
    with path.open("rb") as export:
        offline.verify(export, keys)
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    path.unlink()
    rows.append(
        (
            f"offline verify, #1..#{first_slice:,}",
            f"{n / seconds:,.0f} rows/s",
            f"= {n / seconds / VERIFY_BUDGET:.2f}x 200k; {size / 1024**2:,.0f} MB file "
            f"in {seconds:,.1f} s; RSS +{mb(growth)}, tracemalloc peak {mb(traced / 1024)}",
        )
    )
    report(rows)


SCHEDULED_NEW = 10_000  # new events between two scheduled verifications
SCHEDULED_ROUNDS = 3
SCHEDULED_BUDGET = 1.0  # seconds (DESIGN section 11)


def scheduled_verification(copy_rate: float) -> None:
    """The scheduled verification as beat runs it (`chain_verify_scheduled`: on from the
    newest signed outcome) after SCHEDULED_NEW events appended through the real
    `audit_record` and a checkpoint signed, SCHEDULED_ROUNDS times; beside it the full run
    (`chain_verify_and_record`, which also signs the outcome the first round goes on from)
    and the raw COPY floor, both from this run."""
    from django.db import transaction

    from audit.services import SYSTEM, audit_record
    from audit.signing import checkpoint_sign
    from audit.verbs import Verb
    from audit.verify import chain_verify_and_record, chain_verify_scheduled

    began = time.perf_counter()
    full, _ = chain_verify_and_record()
    full_seconds = time.perf_counter() - began
    assert full.ok and full.from_seq is None, full.message
    full_rate = full.up_to_seq / full_seconds

    timings: list[float] = []
    appended = 0.0
    for _ in range(SCHEDULED_ROUNDS):
        began = time.perf_counter()
        for start in range(0, SCHEDULED_NEW, 100):
            with transaction.atomic():
                for i in range(start, min(start + 100, SCHEDULED_NEW)):
                    audit_record(
                        verb=Verb.RUN_QUEUED,
                        actor=SYSTEM,
                        subject_type="run",
                        subject_id=i,
                        payload={"bench": "scheduled verification", "i": i},
                    )
        # The checkpoint is signed at the chain head: every new event chained first.
        chained_all()
        assert checkpoint_sign() is not None
        appended += time.perf_counter() - began
        began = time.perf_counter()
        outcome, _ = chain_verify_scheduled()
        timings.append(time.perf_counter() - began)
        assert outcome.ok and outcome.from_seq is not None, outcome.message
        assert outcome.up_to_seq - outcome.from_seq == SCHEDULED_NEW, outcome.message
    began = time.perf_counter()
    idle, _ = chain_verify_scheduled()
    idle_seconds = time.perf_counter() - began
    assert idle.ok and idle.from_seq == idle.up_to_seq, idle.message

    typical = sorted(timings)[len(timings) // 2]
    verdict = "met" if max(timings) < SCHEDULED_BUDGET else "NOT MET"
    floor = SCHEDULED_NEW / copy_rate  # reading that many rows with the raw COPY
    report(
        [
            (
                "full run (chain_verify_and_record)",
                f"{full_rate:,.0f} rows/s",
                f"{full.up_to_seq:,} rows in {full_seconds:,.1f} s; signs the outcome the "
                "scheduled run goes on from",
            ),
            (
                f"scheduled run, {SCHEDULED_NEW:,} new events",
                f"{typical * 1000:,.0f} ms",
                f"median of {SCHEDULED_ROUNDS} (worst {max(timings) * 1000:,.0f} ms) = "
                f"{max(timings) / SCHEDULED_BUDGET:.2f}x budget 1 s ({verdict}); "
                f"{typical / full_seconds:.2%} of the full run's time; "
                f"{SCHEDULED_NEW / typical:,.0f} new rows/s = "
                f"{SCHEDULED_NEW / typical / full_rate:.2f}x the full run's rate; "
                f"{typical / floor:.1f}x the COPY floor for {SCHEDULED_NEW:,} rows "
                f"({floor * 1000:.1f} ms)",
            ),
            (
                "scheduled run, nothing new",
                f"{idle_seconds * 1000:,.1f} ms",
                "what does not depend on the new events: finding the signed outcome, the "
                "earlier checkpoints looked up, the checkpoint file, the chain head",
            ),
            (
                "  (appending them, audit_record)",
                f"{SCHEDULED_NEW * SCHEDULED_ROUNDS / appended:,.0f} events/s",
                "100 to a transaction; not a budget here",
            ),
        ]
    )


def drop(url: str) -> None:
    import psycopg
    from django.db import connections

    connections.close_all()
    admin = urlunparse(urlparse(url)._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as con:
        con.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
    shutil.rmtree(WORK, ignore_errors=True)
    print(f"\n  dropped {DB_NAME}")


if __name__ == "__main__":
    main()
