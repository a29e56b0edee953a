"""The long poll wakes on the decision's doorbell (agents.stepwait), not by reading the
database over and over: a waiting poll reads the step once, then once per doorbell (and
once per re-check, which bounds what a lost doorbell costs)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, cast

import pytest
import redis
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from agents import remote, stepwait
from agents.models import Agent
from agents.remote import apikey_create
from agents.services import agent_create, killswitch_engage, version_create, version_publish
from approvals.models import ApprovalRequest
from approvals.services import approval_decide

POLICY = {
    "rules": [
        {"tool": "test.pay", "effect": "approve"},
        {"tool": "test.count", "effect": "allow"},
    ]
}
PAY = {"seq": 1, "tool": "test.pay", "args": {"claim_id": "C", "amount": 5000}}


@pytest.fixture
def agent(world: Any) -> Agent:
    agent = agent_create(slug="ledger-bot", name="Ledger", team=world.claims, kind="remote")
    version_publish(
        version=version_create(agent=agent, program="", policy=POLICY), user=None, reason="first"
    )
    agent.refresh_from_db()
    return agent


@pytest.fixture
def key(agent: Agent, world: Any) -> str:
    return apikey_create(agent=agent, name="k", user=world.admin)[1]


def api(key: str, method: str, path: str, body: Any = None) -> Any:
    client, headers = Client(), {"Authorization": f"Bearer {key}"}
    if method == "GET":
        return client.get(f"/api/v1{path}", headers=headers)
    return client.post(
        f"/api/v1{path}", data=body or {}, content_type="application/json", headers=headers
    )


def held_run(key: str) -> int:
    run_id = int(api(key, "POST", "/runs", {"input": {}}).json()["run"])
    assert api(key, "POST", f"/runs/{run_id}/steps", PAY).json()["decision"] == "pending"
    return run_id


class Reads:
    """Counts the poll's reads of the step and says when the poll starts waiting."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        self.waiting = threading.Event()
        poll, wait = remote.remote_action_poll, stepwait.Bell.wait

        def counted(**kwargs: Any) -> Any:
            self.count += 1
            return poll(**kwargs)

        async def waiting(bell: stepwait.Bell, timeout: float) -> bool:
            self.waiting.set()
            return await wait(bell, timeout)

        monkeypatch.setattr(remote, "remote_action_poll", counted)
        monkeypatch.setattr(stepwait.Bell, "wait", waiting)


@pytest.mark.django_db(transaction=True)
def test_a_waiting_poll_answers_after_the_decision_commits_and_not_before(
    key: str, world: Any, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    settings.BATON_STEP_RECHECK_SECONDS = 60  # only the doorbell wakes it here
    run_id = held_run(key)
    reads = Reads(monkeypatch)
    answers: list[Any] = []

    def long_poll() -> None:
        try:
            answers.append(api(key, "GET", f"/runs/{run_id}/steps/1?wait=25"))
        finally:
            connection.close()

    poll = threading.Thread(target=long_poll)
    poll.start()
    assert reads.waiting.wait(20), "the poll never started waiting"
    assert poll.is_alive() and not answers and reads.count == 1
    request = ApprovalRequest.objects.get(run_id=run_id)
    approval_decide(
        request_id=request.pk,
        user=world.supervisor,
        verdict="approve",
        seen_args_hash=request.args_hash,
    )
    poll.join(25)
    answer = answers[0]
    # A poll that ran out its wait would say "pending": "allow" means it saw the decision,
    # and it read the step twice — before waiting and once after the doorbell.
    assert answer.status_code == 200 and answer.json()["decision"] == "allow"
    assert answer.json()["args"]["amount"] == 5000
    assert reads.count == 2


@pytest.mark.django_db
def test_a_poll_with_no_decision_answers_pending_after_its_wait(
    key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = held_run(key)
    reads = Reads(monkeypatch)
    answer = api(key, "GET", f"/runs/{run_id}/steps/1?wait=0.5")
    assert answer.status_code == 200 and answer.json()["decision"] == "pending"
    assert reads.waiting.is_set() and reads.count == 1


@pytest.mark.django_db
def test_waiting_two_seconds_costs_no_more_queries_than_not_waiting(key: str) -> None:
    run_id = held_run(key)
    counts = []
    for wait in ("0", "2"):
        with CaptureQueriesContext(connection) as queries:
            answer = api(key, "GET", f"/runs/{run_id}/steps/1?wait={wait}")
        assert answer.json()["decision"] == "pending"
        counts.append(len(queries))
    # Reading four times a second would add ~8 reads of the run's journal in 2 s.
    assert counts[0] == counts[1] and counts[1] < 15


@pytest.mark.django_db(transaction=True)
def test_step_changed_rings_for_a_switch_engaged_and_times_out_without_one(
    key: str, agent: Agent, world: Any
) -> None:
    run_id = held_run(key)
    assert async_to_sync(stepwait.step_changed)(run_id, 0.2) is False
    rang: list[bool] = []
    listening = threading.Event()

    async def wait() -> None:
        async with stepwait.run_bell(run_id) as bell:
            listening.set()
            rang.append(await bell.wait(20))

    waiter = threading.Thread(target=async_to_sync(wait))
    waiter.start()
    assert listening.wait(20)
    killswitch_engage(scope="agent", agent=agent, mode="pause", reason="audit", user=world.admin)
    waiter.join(25)
    assert rang == [True]


@pytest.mark.django_db(transaction=True)
def test_a_poll_whose_doorbell_is_lost_reads_again_and_answers_the_decision(
    key: str, world: Any, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    """A doorbell can be lost on its way (Redis restarted, a send that failed): the poll
    reads the step again every BATON_STEP_RECHECK_SECONDS, so it answers the decision
    within its wait instead of `pending` after all of it."""
    import approvals.services

    settings.BATON_STEP_RECHECK_SECONDS = 0.2
    monkeypatch.setattr(approvals.services, "ring_run", lambda run_id: None)  # never rung
    run_id = held_run(key)
    reads = Reads(monkeypatch)
    answers: list[Any] = []

    def long_poll() -> None:
        try:
            answers.append(api(key, "GET", f"/runs/{run_id}/steps/1?wait=25"))
        finally:
            connection.close()

    poll = threading.Thread(target=long_poll)
    poll.start()
    assert reads.waiting.wait(20), "the poll never started waiting"
    request = ApprovalRequest.objects.get(run_id=run_id)
    approval_decide(
        request_id=request.pk,
        user=world.supervisor,
        verdict="approve",
        seen_args_hash=request.args_hash,
    )
    poll.join(25)
    assert answers[0].status_code == 200 and answers[0].json()["decision"] == "allow"


def _receiving_for_the_process(client: redis.Redis) -> bool:
    """A receive of this test's Redis database blocked in BZPOPMIN: a Redis layer's one
    receive for every channel of the process."""
    db = client.connection_pool.connection_kwargs.get("db", 0)
    clients = cast("list[dict[str, str]]", client.client_list())
    return any(
        c.get("cmd") == "bzpopmin" and int(c.get("db", -1)) == db and "b" in c.get("flags", "")
        for c in clients
    )


async def _second_hears_its_doorbell(first: Any, second: stepwait.Bell) -> bool:
    """`first` (a wait, as a task) holds the process's receive, blocked in Redis; the
    second bell waits. Then, with this loop held (no await), a doorbell for the second
    bell's run goes out from another loop, Redis hands it to the blocked receive, and
    `first` ends before this loop has read the reply. Does the second bell hear it?"""
    client = redis.Redis.from_url(settings.REDIS_URL)
    while not _receiving_for_the_process(client):
        await asyncio.sleep(0.01)
    waiting = asyncio.ensure_future(second.wait(20))
    for _ in range(5):
        await asyncio.sleep(0)  # the second bell waits
    sender = threading.Thread(
        target=async_to_sync(get_channel_layer().group_send),
        args=(stepwait.run_group(2), {"type": "live.doorbell"}),
    )
    sender.start()
    sender.join()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    return bool(await waiting)


@pytest.fixture
def redis_layer(settings: Any) -> None:
    settings.BATON_STEP_RECHECK_SECONDS = 60  # only the doorbell wakes the second bell
    assert type(get_channel_layer()).__name__ == "RedisChannelLayer"


def test_a_wait_that_ends_does_not_take_another_waiters_doorbell_with_it(
    redis_layer: None,
) -> None:
    """The Redis layer receives for all the channels of a process at once: the first
    waiter's receive pops the next message of the process, whoever it is for. Here that
    waiter stops waiting (its wait ran out, or its client went away) at the moment Redis
    has popped the second waiter's doorbell for it and before it is handed on: the
    second waiter must still get it. A receive cancelled with its wait lost it."""

    async def scenario() -> bool:
        async with stepwait.run_bell(1) as first, stepwait.run_bell(2) as second:
            return await _second_hears_its_doorbell(asyncio.ensure_future(first.wait(20)), second)

    assert async_to_sync(scenario)() is True, "the second waiter's doorbell was lost"


def test_a_live_socket_closing_does_not_take_a_waiters_doorbell_with_it(
    redis_layer: None,
) -> None:
    """A live socket's consumer receives on the default layer, and Channels cancels that
    receive when the socket closes: at the wrong moment it would lose a message it
    popped for another channel of the process. A bell's doorbell is not among them."""
    layer = get_channel_layer()

    async def scenario() -> bool:
        socket = await layer.new_channel()
        closing = asyncio.ensure_future(layer.receive(socket))
        async with stepwait.run_bell(2) as bell:
            return await _second_hears_its_doorbell(closing, bell)

    assert async_to_sync(scenario)() is True, "the waiter's doorbell was lost"
