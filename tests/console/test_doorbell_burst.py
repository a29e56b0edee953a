"""A burst of events rings many doorbells at once (a busy fleet, runs resuming after a
pause). The process's doorbell loop must neither open a Redis connection per ring nor
lose the last ring: every socket must still wake for the newest event."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from channels.layers import get_channel_layer

from console import live
from tests.support.doorbells import Doorbells, agent_group

BURST = 2_000


class Sends:
    """The real layer's group_send, counted: how many, and how many at once."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.total = self.in_flight = self.most_in_flight = 0
        layer = get_channel_layer()
        send = layer.group_send

        async def counted(group: str, message: dict[str, Any]) -> None:
            self.total += 1
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            try:
                await send(group, message)
            finally:
                self.in_flight -= 1

        monkeypatch.setattr(layer, "group_send", counted)


@pytest.fixture
def held_loop() -> Iterator[threading.Event]:
    """The doorbell loop kept busy until the test lets go, so every ring of a burst is
    queued before the first is sent — the worst case, made certain rather than hoped for."""
    loop = live._loop()
    assert loop is not None, "the suite runs the Redis channel layer"
    started, release = threading.Event(), threading.Event()

    def hold() -> None:
        started.set()
        release.wait(60)

    loop.call_soon_threadsafe(hold)
    assert started.wait(30)
    yield release
    release.set()


def wait_until_sent(sends: Sends, expected: int) -> None:
    # The loop is drained when a marker scheduled after the burst has run and no send is
    # left in flight; bounded, never a sleep standing in for "done".
    loop = live._loop()
    assert loop is not None
    for _ in range(600):
        done = threading.Event()
        loop.call_soon_threadsafe(done.set)
        assert done.wait(30)
        if sends.in_flight == 0 and sends.total >= expected:
            return
        threading.Event().wait(0.05)
    raise AssertionError(f"{sends.total} of {expected} sends after 30 s")


def test_a_burst_on_one_group_sends_one_doorbell_and_it_is_heard(
    doorbells: Doorbells, held_loop: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    group = agent_group(987_001)
    doorbells.listen(group)
    sends = Sends(monkeypatch)
    for _ in range(BURST):
        live._send([group], {"type": live.DOORBELL})
    held_loop.set()
    wait_until_sent(sends, 1)
    assert sends.total == 1
    assert doorbells.heard() == {group}
    # A ring after the first was sent is not swallowed: a later event wakes the sockets too.
    doorbells.reset()
    live._send([group], {"type": live.DOORBELL})
    assert doorbells.heard() == {group}


def test_a_burst_on_many_groups_keeps_few_sends_in_flight(
    held_loop: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    sends = Sends(monkeypatch)
    for n in range(BURST):
        live._send([agent_group(988_000 + n)], {"type": live.DOORBELL})
    held_loop.set()
    wait_until_sent(sends, BURST)
    assert sends.total == BURST
    assert sends.most_in_flight <= live.MAX_SENDS


def test_messages_to_a_person_are_each_sent(
    held_loop: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Not doorbells: they carry content (a socket told to close), none may be merged.
    sends = Sends(monkeypatch)
    for _ in range(5):
        live.say_to_user(987_002, {"type": "live.close"})
    held_loop.set()
    wait_until_sent(sends, 5)
    assert sends.total == 5
