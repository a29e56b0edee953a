"""The Python client (agents.client) and `governed`, against the console served by uvicorn:
a real server process, its Postgres and Redis. Approvals and kill switches are decided in
this process through their services (the approval screen's `approval_decide`) while the
client waits in another thread."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from agents.client import (
    AsyncBaton,
    BadRequest,
    Baton,
    ConnectionFailed,
    Denied,
    Halted,
    Paused,
    RateLimited,
    Rejected,
    Retries,
    ServerError,
    governed,
)
from agents.models import Action, Agent, Run
from agents.remote import apikey_create
from agents.services import agent_create, killswitch_engage, version_create, version_publish
from approvals.models import ApprovalRequest
from approvals.services import approval_decide
from audit.models import AuditEvent
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]
S = Action.Status
PAY_HELD = {
    "rules": [
        {"tool": "test.count", "effect": "allow"},
        {"tool": "test.pay", "effect": "approve"},
    ]
}


@pytest.fixture
def remote(world: Any) -> Callable[..., str]:
    """A remote agent with `policy` live; returns its API key."""

    def make(policy: dict[str, Any], slug: str = "ledger-bot") -> str:
        agent = agent_create(slug=slug, name=slug, team=world.claims, kind=Agent.Kind.REMOTE)
        version = version_create(agent=agent, program="", policy=policy)
        version_publish(version=version, user=None, reason="set-up")
        return apikey_create(agent=agent, name="k", user=None)[1]

    return make


class Recorded(Baton):
    """A client that records the pauses it takes instead of sleeping through long ones."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pauses: list[float] = []

    def _sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        super()._sleep(seconds)


def verbs(run_id: int) -> list[str]:
    return list(
        AuditEvent.objects.filter(run_id=run_id).order_by("seq").values_list("verb", flat=True)
    )


def approve(world: Any, run_id: int, edited: dict[str, Any] | None = None) -> None:
    request = wait_for(lambda: ApprovalRequest.objects.filter(run_id=run_id).first())
    approval_decide(
        request_id=request.pk,
        user=world.supervisor,
        verdict="approve",
        seen_args_hash=request.args_hash,
        edited_args=edited,
    )


# --- sync ----------------------------------------------------------------------------------


def test_an_allowed_call_runs_the_function_once_and_journals_its_result(
    console_server: Any, remote: Any
) -> None:
    key = remote({"rules": [{"tool": "test.count", "effect": "allow"}]})
    calls: list[dict[str, Any]] = []
    with Baton(console_server.url, key) as baton, baton.session(input={"job": 1}) as session:

        @governed(session, tool="test.count")
        def count(label: str, n: int = 7) -> dict[str, Any]:
            calls.append({"label": label, "n": n})
            return {"counted": label}

        assert count("a") == {"counted": "a"}
        run_id = session.run_id
    assert calls == [{"label": "a", "n": 7}]
    step = Action.objects.get(run_id=run_id, seq=1)
    assert (step.status, step.args, step.result) == (
        S.SUCCEEDED,
        {"label": "a", "n": 7},
        {"counted": "a"},
    )
    assert Run.objects.get(pk=run_id).status == Run.Status.SUCCEEDED
    assert verbs(run_id) == ["run.started", "action.allowed", "action.succeeded", "run.succeeded"]


def test_a_function_that_raises_is_reported_failed_and_the_exception_goes_on(
    console_server: Any, remote: Any
) -> None:
    key = remote({"rules": [{"tool": "test.count", "effect": "allow"}]})
    with Baton(console_server.url, key) as baton:
        session = baton.session()

        @session.governed("test.count")
        def count(label: str) -> None:
            raise ValueError("ledger offline")

        with pytest.raises(ValueError, match="ledger offline"):
            count(label="a")
    step = Action.objects.get(run_id=session.run_id, seq=1)
    assert (step.status, step.error) == (S.FAILED, "ValueError: ledger offline")


def test_a_denied_call_raises_denied_with_the_rule_s_reason_and_never_runs(
    console_server: Any, remote: Any
) -> None:
    key = remote(
        {"rules": [{"tool": "test.pay", "effect": "deny", "reason": "no payouts from bots"}]}
    )
    calls: list[Any] = []
    with Baton(console_server.url, key) as baton:
        session = baton.session()

        @governed(session, tool="test.pay")
        def pay(claim_id: str, amount: float) -> None:
            calls.append(amount)

        with pytest.raises(Denied) as denied:
            pay(claim_id="C-1", amount=50)
    assert "no payouts from bots" in denied.value.reason and denied.value.seq == 1
    assert calls == []
    assert Action.objects.get(run_id=session.run_id, seq=1).status == S.DENIED
    assert "action.denied" in verbs(session.run_id)


def test_a_held_call_waits_for_the_approval_and_runs_with_the_edited_arguments(
    console_server: Any, remote: Any, world: Any
) -> None:
    key = remote(PAY_HELD)
    baton = Baton(console_server.url, key)
    session = baton.session()
    paid: list[dict[str, Any]] = []
    outcome: list[Any] = []

    @governed(session, tool="test.pay", timeout=60)
    def pay(claim_id: str, amount: float) -> dict[str, Any]:
        paid.append({"claim_id": claim_id, "amount": amount})
        return {"paid": amount}

    def agent() -> None:
        try:
            outcome.append(pay(claim_id="C-9", amount=5000))
        except Exception as exc:  # the assertion below shows it
            outcome.append(exc)

    waiting = threading.Thread(target=agent)
    waiting.start()
    request = wait_for(lambda: ApprovalRequest.objects.filter(run_id=session.run_id).first())
    assert request.args == {"claim_id": "C-9", "amount": 5000}
    assert waiting.is_alive() and paid == [], "the call waits while people decide"
    approve(world, session.run_id, edited={"claim_id": "C-9", "amount": 4000})
    waiting.join(60)
    assert outcome == [{"paid": 4000}]
    assert paid == [{"claim_id": "C-9", "amount": 4000}]
    step = Action.objects.get(run_id=session.run_id, seq=1)
    assert step.status == S.SUCCEEDED and step.args["amount"] == 4000
    run_verbs = verbs(session.run_id)
    assert run_verbs.index("action.held") < run_verbs.index("action.succeeded")
    assert "approval.approved" in run_verbs
    baton.close()


def test_a_held_call_people_reject_raises_rejected_and_never_runs(
    console_server: Any, remote: Any, world: Any
) -> None:
    key = remote(PAY_HELD)
    with Baton(console_server.url, key) as baton:
        session = baton.session()
        step = session.submit("test.pay", {"claim_id": "C-2", "amount": 900})
        assert step.decision == "pending"
        request = ApprovalRequest.objects.get(run_id=session.run_id)
        approval_decide(
            request_id=request.pk,
            user=world.supervisor,
            verdict="reject",
            seen_args_hash=request.args_hash,
            comment="no invoice attached",
        )

        @governed(session, tool="test.pay")
        def pay(claim_id: str, amount: float) -> None:
            raise AssertionError("a rejected call must not run")

        # Step 1 again (a resumed agent): the session numbers from 1.
        replay = baton.resume(session.run_id)
        with pytest.raises(Rejected, match="no invoice attached"):
            replay.governed("test.pay")(pay)(claim_id="C-2", amount=900)


def test_a_kill_switch_between_steps_halts_the_next_call(
    console_server: Any, remote: Any, world: Any
) -> None:
    key = remote({"rules": [{"tool": "test.count", "effect": "allow"}]})
    calls: list[str] = []
    with Baton(console_server.url, key) as baton:
        session = baton.session()

        @governed(session, tool="test.count")
        def count(label: str) -> str:
            calls.append(label)
            return label

        count(label="before")
        agent = Agent.objects.get(slug="ledger-bot")
        killswitch_engage(
            scope="agent", agent=agent, mode="halt", reason="fraud alert", user=world.supervisor
        )
        with pytest.raises(Halted) as halted:
            count(label="after")
        assert baton.agent_state().state == "halted"
        assert session.heartbeat().agent_state == "halted"
    assert (halted.value.status, halted.value.code) == (423, "halted")
    # A halt cancels the agent's runs: this one is over, and says so.
    assert halted.value.reason == "the run was cancelled"
    assert Run.objects.get(pk=session.run_id).status == Run.Status.CANCELLED
    assert calls == ["before"]
    assert list(Action.objects.filter(run_id=session.run_id).values_list("seq", flat=True)) == [1]
    assert session.next_seq == 2, "a step refused by a switch keeps its number for the next"


def test_a_resubmitted_step_is_the_same_step_and_the_function_runs_once(
    console_server: Any, remote: Any
) -> None:
    key = remote({"rules": [{"tool": "test.count", "effect": "allow"}]})
    calls: list[str] = []

    def count(label: str) -> dict[str, Any]:
        calls.append(label)
        return {"n": len(calls)}

    with Baton(console_server.url, key) as baton:
        first = baton.session(input={"job": "j"}, idempotency_key="job-j")
        assert first.governed("test.count")(count)(label="x") == {"n": 1}
        # The agent restarts: the same key is the same run, its steps replay from 1.
        again = baton.session(input={"job": "j"}, idempotency_key="job-j")
        assert again.run_id == first.run_id
        assert again.governed("test.count")(count)(label="x") == {"n": 1}
        # The raw call: the same seq twice answers the same step.
        one = baton.submit_step(first.run_id, 2, "test.count", {"label": "y"})
        two = baton.submit_step(first.run_id, 2, "test.count", {"label": "y"})
    assert calls == ["x"]
    assert one == two and one.decision == "allow" and one.idempotency_key
    assert Action.objects.filter(run_id=first.run_id).count() == 2
    assert AuditEvent.objects.filter(run_id=first.run_id, verb="action.allowed").count() == 2


def test_a_rate_limited_call_waits_retry_after_and_goes_through(
    console_server: Any, remote: Any
) -> None:
    key = remote(
        {
            "rules": [{"tool": "test.*", "effect": "allow"}],
            "rate_limits": [{"tool": "test.*", "limit": 1, "per": 2}],
        }
    )
    calls: list[str] = []
    with Recorded(console_server.url, key) as baton:
        session = baton.session()

        @governed(session, tool="test.count")
        def count(label: str) -> str:
            calls.append(label)
            return label

        assert count(label="a") == "a"
        assert count(label="b") == "b"
    assert calls == ["a", "b"]
    # The second call was answered 429 at least once and waited its Retry-After (whole s).
    assert baton.pauses and all(p >= 1 and p == int(p) for p in baton.pauses)
    statuses = Action.objects.filter(run_id=session.run_id).order_by("seq")
    assert [(a.seq, a.status) for a in statuses] == [(1, S.SUCCEEDED), (2, S.SUCCEEDED)]


def test_past_its_bound_a_rate_limit_is_raised_and_the_step_number_kept(
    console_server: Any, remote: Any
) -> None:
    key = remote(
        {
            "rules": [{"tool": "test.*", "effect": "allow"}],
            "rate_limits": [{"tool": "test.*", "limit": 1, "per": 3600}],
        }
    )
    with Baton(console_server.url, key, retries=Retries(rate_limit_wait=5)) as baton:
        session = baton.session()
        session.submit("test.count", {"label": "a"})
        with pytest.raises(RateLimited) as limited:
            session.submit("test.count", {"label": "b"})
    assert limited.value.retry_after > 5 and limited.value.code == "rate_limited"
    assert session.next_seq == 2
    assert Action.objects.filter(run_id=session.run_id).count() == 1


def test_bad_input_raises_bad_request_naming_the_field(console_server: Any, remote: Any) -> None:
    key = remote({"rules": [{"tool": "test.count", "effect": "allow"}]})
    with Baton(console_server.url, key) as baton:
        run = baton.start_run()
        with pytest.raises(BadRequest) as bad:
            baton.submit_step(run.id, 0, "test.count", {"label": "a"})
    assert bad.value.code == "bad_field" and bad.value.field == "seq"


# --- async ---------------------------------------------------------------------------------


def test_the_async_client_governs_coroutines_and_plain_functions(
    console_server: Any, remote: Any
) -> None:
    key = remote({"rules": [{"tool": "test.count", "effect": "allow"}]})
    calls: list[str] = []

    async def agent() -> int:
        async with (
            AsyncBaton(console_server.url, key) as baton,
            await baton.session(input={"async": True}) as session,
        ):

            @governed(session, tool="test.count")
            async def count(label: str) -> str:
                await asyncio.sleep(0)
                calls.append(label)
                return label

            @session.governed("test.count")
            def count_plain(label: str) -> str:
                calls.append(label)
                return label

            assert await count(label="a") == "a"
            assert await count_plain(label="b") == "b"
            return session.run_id

    run_id = asyncio.run(agent())
    assert calls == ["a", "b"]
    assert Run.objects.get(pk=run_id).status == Run.Status.SUCCEEDED
    assert list(Action.objects.filter(run_id=run_id).values_list("status", flat=True)) == [
        S.SUCCEEDED,
        S.SUCCEEDED,
    ]


def test_the_async_client_waits_for_the_approval(
    console_server: Any, remote: Any, world: Any
) -> None:
    key = remote(PAY_HELD)
    run_ids: list[int] = []
    outcome: list[Any] = []

    async def agent() -> Any:
        async with AsyncBaton(console_server.url, key) as baton:
            session = await baton.session()
            run_ids.append(session.run_id)

            @governed(session, tool="test.pay", timeout=60)
            async def pay(claim_id: str, amount: float) -> dict[str, Any]:
                return {"paid": amount}

            return await pay(claim_id="C-3", amount=700)

    def in_thread() -> None:
        try:
            outcome.append(asyncio.run(agent()))
        except Exception as exc:
            outcome.append(exc)

    waiting = threading.Thread(target=in_thread)
    waiting.start()
    run_id = wait_for(lambda: run_ids and run_ids[0])
    approve(world, run_id)
    waiting.join(60)
    assert outcome == [{"paid": 700}]


def test_the_async_client_honours_a_rate_limit_and_a_halt(
    console_server: Any, remote: Any, world: Any
) -> None:
    key = remote(
        {
            "rules": [{"tool": "test.*", "effect": "allow"}],
            "rate_limits": [{"tool": "test.*", "limit": 1, "per": 2}],
        }
    )

    async def agent() -> tuple[int, list[str]]:
        async with AsyncBaton(console_server.url, key) as baton:
            session = await baton.session()
            first = await session.submit("test.count", {"label": "a"})
            await baton.report(session.run_id, first.seq, ok=True, result=1)
            second = await session.submit("test.count", {"label": "b"})  # waits Retry-After
            return session.run_id, [first.decision, second.decision]

    run_id, decisions = asyncio.run(agent())
    assert decisions == ["allow", "allow"]
    killswitch_engage(scope="global", mode="pause", reason="maintenance", user=world.supervisor)

    async def paused() -> None:
        async with AsyncBaton(console_server.url, key) as baton:
            await baton.report(run_id, 2, ok=True, result=2)
            await baton.submit_step(run_id, 3, "test.count", {"label": "c"})

    with pytest.raises(Paused, match="maintenance"):
        asyncio.run(paused())


# --- retries, without a server ---------------------------------------------------------------


class NoSleep(Baton):
    def _sleep(self, seconds: float) -> None:
        pass


def scripted(*answers: Any) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    """A transport answering from a script: a status and body, or an exception to raise."""
    sent: list[httpx.Request] = []
    script = list(answers)

    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        answer = script.pop(0)
        if isinstance(answer, Exception):
            raise answer
        status, body = answer
        return httpx.Response(status, json=body)

    return httpx.MockTransport(handle), sent


STEP = {"seq": 1, "tool": "t.x", "status": "started", "decision": "allow", "args": {}}
RUN = {"run": 5, "agent": "a", "version": 1, "status": "running", "output": None, "error": ""}


def test_a_lost_answer_to_a_step_is_asked_again_and_a_run_start_without_key_is_not() -> None:
    transport, sent = scripted(httpx.ReadError("reset"), (503, {"code": "x"}), (200, STEP))
    baton = NoSleep("http://baton.test", "bk_x.y", transport=transport)
    assert baton.submit_step(5, 1, "t.x", {}).decision == "allow"
    assert len(sent) == 3 and all(json.loads(r.content)["seq"] == 1 for r in sent)

    transport, sent = scripted(httpx.ReadError("reset"), (201, RUN))
    baton = NoSleep("http://baton.test", "bk_x.y", transport=transport)
    with pytest.raises(ConnectionFailed):
        baton.start_run({})
    assert len(sent) == 1, "a start without an idempotency key may have started a run"

    transport, sent = scripted(httpx.ReadError("reset"), (200, RUN))
    baton = NoSleep("http://baton.test", "bk_x.y", transport=transport)
    assert baton.start_run({}, idempotency_key="k1").id == 5
    assert [r.headers["Idempotency-Key"] for r in sent] == ["k1", "k1"]


def test_a_server_error_is_raised_after_the_retries_allowed() -> None:
    transport, sent = scripted(*[(500, {"code": "internal_error", "error": "boom"})] * 3)
    baton = NoSleep("http://baton.test", "bk_x.y", transport=transport, retries=Retries(attempts=3))
    with pytest.raises(ServerError, match="boom"):
        baton.run(5)
    assert len(sent) == 3


# --- the package itself, the example ---------------------------------------------------------


def without_django() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}


def test_the_client_imports_without_django() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, agents.client, agents.client.example; "
            "assert not [m for m in sys.modules if m.split('.')[0] in "
            "('django', 'console', 'audit', 'approvals', 'ninja')], sorted(sys.modules)",
        ],
        cwd=ROOT,
        env=without_django(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_the_example_agent_runs_end_to_end_against_the_console(
    console_server: Any, remote: Any
) -> None:
    key = remote(
        {
            "rules": [
                {"tool": "inventory.stock_level", "effect": "allow"},
                {"tool": "purchasing.create_po", "when": "total <= 5000", "effect": "allow"},
                {"tool": "purchasing.create_po", "effect": "deny", "reason": "over budget"},
                {"tool": "email.*", "effect": "shadow"},
            ]
        },
        slug="reorder-bot",
    )
    done = subprocess.run(
        [sys.executable, "-m", "agents.client.example", "--url", console_server.url, "--key", key],
        cwd=ROOT,
        env=without_django(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["status"] == "succeeded"
    assert [o["sku"] for o in summary["placed"]] == ["ABC-100"]
    assert [o["sku"] for o in summary["not_placed"]] == ["QRS-300"]
    assert "over budget" in summary["not_placed"][0]["why"]
    assert summary["mail"]["simulated"] is True
    steps = Action.objects.filter(run_id=summary["run"])
    by_status = sorted((a.name, a.status) for a in steps if a.kind != Action.Kind.MODEL)
    assert by_status == [
        ("email.send", S.SHADOWED),
        ("inventory.stock_level", S.SUCCEEDED),
        ("inventory.stock_level", S.SUCCEEDED),
        ("inventory.stock_level", S.SUCCEEDED),
        ("purchasing.create_po", S.DENIED),
        ("purchasing.create_po", S.SUCCEEDED),
    ]
    assert steps.filter(kind=Action.Kind.MODEL).count() == 3
    assert Run.objects.get(pk=summary["run"]).status == Run.Status.SUCCEEDED
