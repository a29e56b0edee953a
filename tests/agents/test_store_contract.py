"""The step store and the audit append keep one contract on Postgres and on SQLite (the
embedded default): admission, a step journaled once, lease loss on finish, and a chain
with no fork and no gap.

Written once, run twice in the same `pytest`: here on the suite's Postgres, and by
`test_the_contract_holds_on_sqlite` in a child `pytest` of this module on the embedded
default's SQLite (IMMEDIATE transactions, as `make run` uses it). A child process rather
than a second database alias because the store and every service write through the
default connection, as the product does; a second alias would test a path Baton never
runs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import DatabaseError, connection, transaction
from django.db.models import GeneratedField
from django.utils import timezone

from agents import store
from agents.errors import LeaseLost, Stopped
from agents.models import Action, Agent, KillSwitch, Run
from agents.services import killswitch_engage, killswitch_release, run_cancel, run_start
from audit import export, offline
from audit.chain import CONTENT_FIELDS, FORMAT_FIELD, GENESIS, canonical_content, chain_hash
from audit.models import AuditEvent, ChainHead
from audit.services import SYSTEM, Actor, audit_record, event_content
from audit.verbs import Verb
from audit.verify import chain_verify
from tests.conftest import ALLOW_ALL_TESTS, ON_SQLITE, ROOT

pytestmark = pytest.mark.django_db


@pytest.fixture
def agent(make_agent: Any) -> Agent:
    agent: Agent = make_agent("clerk", "tests.support.runtime_agents.slow_steps", ALLOW_ALL_TESTS)
    return agent


@pytest.fixture
def running(agent: Agent) -> tuple[Run, uuid.UUID]:
    """A run a worker has claimed: running under this worker's lease token."""
    run = run_start(agent=agent, input={"claim": "C-1"})
    token = uuid.uuid4()
    Run.objects.filter(pk=run.pk).update(
        status=Run.Status.RUNNING,
        lease_token=token,
        lease_until=timezone.now() + timedelta(minutes=5),
        attempts=1,
    )
    run.refresh_from_db()
    return run, token


def start(run: Run, token: uuid.UUID, seq: int = 1, **overrides: Any) -> Action:
    args = {"amount": 12.5, "to": "ACME"}
    fields: dict[str, Any] = {
        "run": run,
        "token": token,
        "agent": run.agent,
        "seq": seq,
        "name": "test.pay",
        "requested": args,
        "args": args,
        "args_hash": f"hash-{seq}",
        "rule_index": 0,
        "rule": {"tool": "test.*", "effect": "allow"},
        "reason": "allowed by rule 0",
        "key": f"{run.pk}-{seq}",
        "actor": Actor.agent(run.agent),
        "payload": {"seq": seq, "tool": "test.pay", "status": "started"},
    }
    return store.start_step(**{**fields, **overrides})


def finish(action: Action, run: Run, status: str = Action.Status.SUCCEEDED) -> None:
    store.finish_step(
        action=action,
        run=run,
        agent=run.agent,
        status=status,
        verb=Verb.ACTION_SUCCEEDED,
        result={"paid": True},
        error="",
        actor=Actor.agent(run.agent),
        payload={"seq": action.seq, "status": status},
    )


def step_events(run: Run) -> list[str]:
    return list(
        AuditEvent.objects.filter(run_id=run.pk, subject_type="action")
        .order_by("seq")
        .values_list("verb", flat=True)
    )


# --- admission -------------------------------------------------------------------------


def test_an_admitted_step_is_journaled_started_with_its_event(
    running: tuple[Run, uuid.UUID],
) -> None:
    run, token = running
    action = start(run, token)
    stored = Action.objects.get(run=run, seq=1)
    assert stored.pk == action.pk
    assert stored.status == Action.Status.STARTED and stored.attempts == 1
    assert stored.args == {"amount": 12.5, "to": "ACME"}
    assert stored.rule == {"tool": "test.*", "effect": "allow"}
    assert stored.started_at == action.started_at
    event = AuditEvent.objects.get(run_id=run.pk, subject_type="action")
    assert (event.verb, event.subject_id) == (Verb.ACTION_ALLOWED, f"{run.pk}/1")
    assert (event.agent_id, event.team_id) == (run.agent.pk, run.agent.team_id)


@pytest.mark.parametrize("scope", list(KillSwitch.Scope))
def test_an_engaged_switch_refuses_the_step_and_nothing_is_written(
    running: tuple[Run, uuid.UUID], world: Any, scope: str
) -> None:
    run, token = running
    killswitch_engage(
        scope=scope,
        mode=KillSwitch.Mode.PAUSE,
        reason="incident 7",
        user=world.supervisor,
        team=run.agent.team if scope == KillSwitch.Scope.TEAM else None,
        agent=run.agent if scope == KillSwitch.Scope.AGENT else None,
    )
    with pytest.raises(Stopped) as stopped:
        start(run, token)
    assert stopped.value.mode == KillSwitch.Mode.PAUSE
    assert "incident 7" in str(stopped.value)
    assert not Action.objects.filter(run=run).exists()
    assert step_events(run) == []


def test_a_switch_on_another_agent_or_a_released_one_does_not_refuse(
    running: tuple[Run, uuid.UUID], world: Any, make_agent: Any
) -> None:
    run, token = running
    other = make_agent("other", "tests.support.runtime_agents.slow_steps", ALLOW_ALL_TESTS)
    killswitch_engage(
        scope="agent", mode="pause", reason="not you", user=world.supervisor, agent=other
    )
    mine = killswitch_engage(
        scope="agent", mode="pause", reason="you", user=world.supervisor, agent=run.agent
    )
    killswitch_release(switch=mine, user=world.supervisor, reason="all clear")
    start(run, token)
    assert step_events(run) == [Verb.ACTION_ALLOWED]


def test_a_halt_cancels_the_run_and_refuses_its_next_step(
    running: tuple[Run, uuid.UUID], world: Any
) -> None:
    run, token = running
    killswitch_engage(scope="global", mode="halt", reason="stop all", user=world.supervisor)
    with pytest.raises(Stopped) as stopped:
        start(run, token)
    assert stopped.value.mode == "cancel"
    assert not Action.objects.filter(run=run).exists()


def test_a_cancelled_run_refuses_the_step(running: tuple[Run, uuid.UUID], world: Any) -> None:
    run, token = running
    run_cancel(run=run, user=world.supervisor, reason="wrong claim")
    with pytest.raises(Stopped) as stopped:
        start(run, token)
    assert stopped.value.mode == "cancel"
    assert step_events(run) == []


def test_a_worker_without_the_lease_is_refused(running: tuple[Run, uuid.UUID]) -> None:
    run, _ = running
    with pytest.raises(LeaseLost):
        start(run, uuid.uuid4())
    Run.objects.filter(pk=run.pk).update(lease_token=None, status=Run.Status.QUEUED)
    with pytest.raises(LeaseLost):
        start(run, uuid.uuid4())
    assert not Action.objects.filter(run=run).exists()
    assert step_events(run) == []


def test_admit_alone_refuses_as_the_step_does(running: tuple[Run, uuid.UUID], world: Any) -> None:
    run, token = running
    with transaction.atomic():
        store.admit(run.pk, token, run.agent)
    killswitch_engage(
        scope="team", mode="pause", reason="team drill", user=world.supervisor, team=run.agent.team
    )
    with pytest.raises(Stopped), transaction.atomic():
        store.admit(run.pk, token, run.agent)
    with pytest.raises(LeaseLost), transaction.atomic():
        store.admit(run.pk, uuid.uuid4(), run.agent)


# --- replay and lease loss -------------------------------------------------------------


def test_a_step_already_journaled_is_not_journaled_again(
    running: tuple[Run, uuid.UUID],
) -> None:
    """A replay that reaches a started step finds it in the journal; a second start of the
    same step (another worker racing for it) is refused and writes nothing."""
    run, token = running
    first = start(run, token)
    with pytest.raises(LeaseLost):
        start(run, token)
    assert list(Action.objects.filter(run=run).values_list("pk", flat=True)) == [first.pk]
    assert step_events(run) == [Verb.ACTION_ALLOWED]


def test_the_attempt_holding_a_step_records_its_outcome_once(
    running: tuple[Run, uuid.UUID],
) -> None:
    run, token = running
    action = start(run, token)
    finish(action, run)
    stored = Action.objects.get(pk=action.pk)
    assert stored.status == Action.Status.SUCCEEDED and stored.result == {"paid": True}
    assert stored.finished_at == action.finished_at
    # Replayed after it finished: the step is no longer started, so nothing moves.
    action.status = Action.Status.STARTED
    with pytest.raises(LeaseLost):
        finish(action, run, status=Action.Status.FAILED)
    assert Action.objects.get(pk=action.pk).status == Action.Status.SUCCEEDED
    assert step_events(run) == [Verb.ACTION_ALLOWED, Verb.ACTION_SUCCEEDED]


def test_a_worker_whose_step_was_taken_over_loses_it_on_finish(
    running: tuple[Run, uuid.UUID],
) -> None:
    run, token = running
    action = start(run, token)
    # Its lease expired and another worker retried the step: a second attempt.
    Action.objects.filter(pk=action.pk).update(attempts=2)
    with pytest.raises(LeaseLost):
        finish(action, run)
    stored = Action.objects.get(pk=action.pk)
    assert stored.status == Action.Status.STARTED and stored.result is None
    assert step_events(run) == [Verb.ACTION_ALLOWED]


def restart(action: Action, run: Run, token: uuid.UUID) -> None:
    payload = {"seq": action.seq, "status": "started", "attempt": action.attempts + 1}
    event = store.action_event(
        Verb.ACTION_ALLOWED, Actor.agent(run.agent), run, run.agent, action.seq, payload
    )
    store.restart_step(action=action, run=run, token=token, agent=run.agent, event=event)


def test_an_approved_step_restarts_once_with_its_event(
    running: tuple[Run, uuid.UUID], world: Any
) -> None:
    run, token = running
    action = start(run, token)
    Action.objects.filter(pk=action.pk).update(status=Action.Status.APPROVED)
    action.status = Action.Status.APPROVED
    twin = Action.objects.get(pk=action.pk)  # a duplicate delivery's copy of the journal
    restart(action, run, token)
    stored = Action.objects.get(pk=action.pk)
    assert (stored.status, stored.attempts) == (Action.Status.STARTED, 2)
    assert (action.status, action.attempts) == (Action.Status.STARTED, 2)
    assert stored.started_at == action.started_at
    with pytest.raises(LeaseLost):
        restart(twin, run, token)
    assert Action.objects.get(pk=action.pk).attempts == 2
    assert step_events(run) == [Verb.ACTION_ALLOWED, Verb.ACTION_ALLOWED]


def test_a_restart_is_refused_by_a_switch_or_a_lost_lease(
    running: tuple[Run, uuid.UUID], world: Any
) -> None:
    run, token = running
    action = start(run, token)
    Action.objects.filter(pk=action.pk).update(status=Action.Status.APPROVED)
    action.status = Action.Status.APPROVED
    with pytest.raises(LeaseLost):
        restart(action, run, uuid.uuid4())
    killswitch_engage(
        scope="agent", mode="pause", reason="check", user=world.supervisor, agent=run.agent
    )
    with pytest.raises(Stopped):
        restart(action, run, token)
    stored = Action.objects.get(pk=action.pk)
    assert (stored.status, stored.attempts) == (Action.Status.APPROVED, 1)
    assert step_events(run) == [Verb.ACTION_ALLOWED]


# --- cancelling a scope's runs (a halt, a run's cancel) ------------------------------


def _runs_of(agent: Agent) -> dict[str, Run]:
    """One run of the agent in each status, a waiting one with a held step."""
    assert agent.live_version is not None
    runs = {
        status: Run.objects.create(agent=agent, version=agent.live_version, input={}, status=status)
        for status in Run.Status.values
    }
    Action.objects.create(
        run=runs[Run.Status.WAITING], seq=1, name="test.pay", status=Action.Status.HELD
    )
    return runs


@pytest.mark.parametrize("scope", list(KillSwitch.Scope))
def test_runs_cancel_stops_the_unfinished_runs_of_its_scope_alone(
    scope: str, make_agent: Any, world: Any
) -> None:
    mine = make_agent("mine", "tests.support.runtime_agents.slow_steps", ALLOW_ALL_TESTS)
    sibling = make_agent("sibling", "tests.support.runtime_agents.slow_steps", ALLOW_ALL_TESTS)
    other = make_agent(
        "other", "tests.support.runtime_agents.slow_steps", ALLOW_ALL_TESTS, team=world.support
    )
    runs = {agent.slug: _runs_of(agent) for agent in (mine, sibling, other)}
    kwargs = {
        "global": {},
        "team": {"team": world.claims.pk},
        "agent": {"agent": mine.pk},
    }[scope]
    covered = {"global": ("mine", "sibling", "other"), "team": ("mine", "sibling")}.get(
        scope, ("mine",)
    )
    finals = {}
    for of_agent in runs.values():
        for status, run in of_agent.items():
            finals[run.pk] = status
    with transaction.atomic():
        answered = store.runs_cancel(reason="halted: test", **kwargs)
    unfinished = [
        (run.pk, run.agent_id, run.agent.team_id)
        for slug in covered
        for status, run in runs[slug].items()
        if status not in Run.FINAL
    ]
    assert answered == sorted(unfinished), "each cancelled run, its agent and team, in id order"
    for run_id, status in finals.items():
        run = Run.objects.get(pk=run_id)
        if run_id in {pk for pk, _, _ in unfinished}:
            assert (run.status, run.error) == (Run.Status.CANCELLED, "halted: test")
            assert run.finished_at is not None and run.lease_token is None
        else:
            assert run.status == status, "a finished run or one outside the scope is left"
    for slug, of_agent in runs.items():
        held = Action.objects.get(run=of_agent[Run.Status.WAITING])
        expected = Action.Status.CANCELLED if slug in covered else Action.Status.HELD
        assert held.status == expected
    with transaction.atomic():
        assert store.runs_cancel(reason="again", **kwargs) == [], "nothing left to cancel"


def test_a_halt_writes_each_cancelled_runs_event_as_audit_run_would(
    make_agent: Any, world: Any
) -> None:
    agents = [
        make_agent(f"clerk-{i}", "tests.support.runtime_agents.slow_steps", ALLOW_ALL_TESTS)
        for i in range(3)
    ]
    runs = [
        Run.objects.create(agent=agents[i % 3], version_id=agents[i % 3].live_version_id, input={})
        for i in range(7)
    ]
    killswitch_engage(
        scope="team", mode="halt", reason='stop "all"\n', user=world.supervisor, team=world.claims
    )
    events = list(AuditEvent.objects.filter(verb=Verb.RUN_CANCELLED).order_by("seq"))
    assert [e.run_id for e in events] == [run.pk for run in runs]
    for event, run in zip(events, runs, strict=True):
        expected = event_content(
            verb=Verb.RUN_CANCELLED,
            actor=Actor.user(world.supervisor),
            subject_type="run",
            subject_id=run.pk,
            agent_id=run.agent_id,
            team_id=world.claims.pk,
            run_id=run.pk,
            payload={"reason": 'halted: stop "all"\n'},
            occurred_at=event.when,
        )
        assert event.body.encode() == canonical_content(expected)
    engaged = AuditEvent.objects.get(verb=Verb.KILLSWITCH_ENGAGED)
    assert engaged.content["payload"]["runs_cancelled"] == 7
    assert chain_verify().ok


# --- the chain -------------------------------------------------------------------------


def test_appends_from_every_writer_chain_with_no_fork_and_no_gap(
    running: tuple[Run, uuid.UUID], world: Any
) -> None:
    run, token = running
    for seq in (1, 2, 3):
        action = start(run, token, seq=seq)
        finish(action, run)
        with transaction.atomic():
            audit_record(
                verb=Verb.RUN_REQUEUED,
                actor=SYSTEM,
                subject_type="run",
                subject_id=run.pk,
                agent=run.agent,
                run=run,
                payload={"why": f"check {seq}", "tricky": ["é", "\U0001f600", 1e-7, 2**60]},
            )
    events = list(
        AuditEvent.objects.order_by("seq").values_list("seq", "prev_hash", "hash", "body")
    )
    assert [seq for seq, *_ in events] == list(range(1, len(events) + 1)), "no gap"
    prev = GENESIS
    for seq, prev_hash, digest, body in events:
        assert prev_hash == prev, f"#{seq} links to the event before it: no fork"
        assert digest == chain_hash(prev, seq, body.encode("utf-8"))
        prev = digest
    head = ChainHead.objects.get(pk=1)
    assert (head.seq, head.hash) == (len(events), prev)
    assert step_events(run).count(Verb.ACTION_SUCCEEDED) == 3
    assert chain_verify().ok


def test_the_trail_refuses_to_be_rewritten(running: tuple[Run, uuid.UUID]) -> None:
    run, token = running
    start(run, token)
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(run_id=run.pk).update(body="{}")
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(run_id=run.pk).delete()


# --- the event content field list ------------------------------------------------------


def _generated_columns() -> list[str]:
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = "
                "'audit_auditevent' AND is_generated = 'ALWAYS' ORDER BY ordinal_position"
            )
            return [name for (name,) in cursor.fetchall()]
        # SQLite: hidden 2 and 3 are generated columns (virtual, stored).
        cursor.execute("PRAGMA table_xinfo(audit_auditevent)")
        return [row[1] for row in cursor.fetchall() if row[6] in (2, 3)]


def test_the_columns_generated_from_the_body_are_the_content_fields() -> None:
    """The database's own column list (SQL generated columns) is audit.chain's field list
    but for the payload, which stays in the body."""
    expected = [name for name in CONTENT_FIELDS if name != "payload"]
    assert sorted(_generated_columns()) == sorted(expected)
    model_generated = [
        f.name for f in AuditEvent._meta.concrete_fields if isinstance(f, GeneratedField)
    ]
    assert model_generated == expected


def test_every_writer_and_reader_uses_the_one_content_field_list() -> None:
    content = event_content(verb=Verb.RUN_QUEUED, actor=SYSTEM, subject_type="run", subject_id=1)
    assert tuple(content) == CONTENT_FIELDS
    # The offline verifiers restate the format on purpose (they import nothing of Baton's).
    assert offline.EVENT_FIELDS == CONTENT_FIELDS
    script = (ROOT / "audit" / "verify.js").read_text()

    def js_list(name: str) -> list[str]:
        found = re.search(rf"const {name} = \[(.*?)\];", script, re.DOTALL)
        assert found, name
        return re.findall(r'"([^"]+)"', found.group(1))

    assert js_list("CSV_COLUMNS") == list(export.CSV_COLUMNS)
    assert sorted(js_list("EVENT_KEYS")) == sorted([*CONTENT_FIELDS, FORMAT_FIELD])
    assert sorted(js_list("STRING_FIELDS") + js_list("ID_FIELDS")) == sorted(
        name for name in CONTENT_FIELDS if name != "payload"
    )


# --- run on SQLite as well -------------------------------------------------------------


@pytest.mark.skipif(ON_SQLITE, reason="this is the child run")
def test_the_contract_holds_on_sqlite(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Every other test of this module, run again on the embedded default's SQLite, passes:
    none fails, errs or is skipped."""
    report = tmp_path / "sqlite.xml"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "PYTEST_ADDOPTS")}
    env.update(BATON_TEST_CONTRACT_ON="sqlite", BATON_DATA_DIR=str(tmp_path / "data"))
    done = subprocess.run(  # noqa: S603 (this interpreter, this module)
        [
            sys.executable,
            "-m",
            "pytest",
            str(Path(__file__).relative_to(ROOT)),
            "-q",
            "-p",
            "no:cacheprovider",
            "--deselect",
            request.node.nodeid,
            f"--junitxml={report}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    suite = ET.parse(report).getroot().find("testsuite")  # noqa: S314 (written by the child)
    assert suite is not None
    counts = {k: int(suite.get(k, "0")) for k in ("tests", "failures", "errors", "skipped")}
    # Every test of this module but this one, each parametrisation counted.
    expected = len(request.node.parent.collect()) - 1
    assert counts == {"tests": expected, "failures": 0, "errors": 0, "skipped": 0}, done.stdout
