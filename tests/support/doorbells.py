"""The live doorbells a service rings after commit, as tests see them (STYLE.md: tests
assert the live events a service produced).

The one place the suite reaches into the live module: the group names and the function
that hands a ring's groups to the channel layer. Where that module moves, change the
import below and nothing else.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from channels import DEFAULT_CHANNEL_LAYER
from channels.layers import channel_layers

from console import live
from console.live import EVERYONE, EVERYTHING, agent_group, team_group, team_level_group

__all__ = [
    "EVERYONE",
    "EVERYTHING",
    "Doorbells",
    "agent_group",
    "doorbells",
    "team_group",
    "team_level_group",
]

DOORBELL = {"type": "live.doorbell"}


class Doorbells:
    """Records every doorbell rung (the groups handed to the real channel layer, which
    still sends them), and reads them back as a socket would: a receiver of its own on
    the real layer, subscribed to the groups a test names."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.rings: list[frozenset[str]] = []
        # A layer of its own, on a loop of its own: a receiver as another process has it.
        self._layer = channel_layers.make_backend(DEFAULT_CHANNEL_LAYER)
        self._loop = asyncio.new_event_loop()
        self._channels: dict[str, str] = {}
        send = live._send

        def recorded(groups: list[str], message: dict[str, Any]) -> None:
            if message == DOORBELL:
                self.rings.append(frozenset(groups))
            send(groups, message)

        monkeypatch.setattr(live, "_send", recorded)

    def groups(self) -> set[str]:
        """Every group rung, over all the rings."""
        return set().union(*self.rings)

    def listen(self, *groups: str) -> None:
        """Subscribe a receiver to each group; call before the service."""
        for group in groups:
            channel = f"test-doorbell.{uuid.uuid4().hex}"
            self._run(self._layer.group_add(group, channel))
            self._channels[group] = channel

    def reset(self) -> None:
        """Forget the rings so far and listen again on fresh receivers, so what the next
        service rings is told apart from any doorbell still unread."""
        self.rings.clear()
        groups = list(self._channels)
        self._discard()
        self.listen(*groups)

    def heard(self, timeout: float = 10) -> set[str]:
        """The groups listened to whose receiver got a doorbell. Waits for each, bounded:
        a group that is never rung fails here, naming it."""
        heard = set()
        for group, channel in self._channels.items():
            try:
                message = self._run(asyncio.wait_for(self._layer.receive(channel), timeout))
            except TimeoutError:
                raise AssertionError(f"no doorbell reached {group} within {timeout}s") from None
            assert message == DOORBELL, message
            heard.add(group)
        return heard

    def close(self) -> None:
        self._discard()
        self._run(self._layer.close_pools())
        self._loop.close()

    def _discard(self) -> None:
        for group, channel in self._channels.items():
            self._run(self._layer.group_discard(group, channel))
        self._channels.clear()

    def _run(self, awaitable: Any) -> Any:
        return self._loop.run_until_complete(awaitable)


@pytest.fixture
def doorbells(monkeypatch: pytest.MonkeyPatch) -> Iterator[Doorbells]:
    """The doorbells rung on commit. In a test inside a transaction, commit with
    `django_capture_on_commit_callbacks(execute=True)` around the service."""
    recorder = Doorbells(monkeypatch)
    yield recorder
    recorder.close()
