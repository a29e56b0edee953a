"""baton_live_sockets follows the live sockets of the process, through the real ASGI stack
and the Redis channel layer."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import pytest_asyncio
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from console.asgi import application

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@pytest_asyncio.fixture(autouse=True)
async def _close_thread_connections() -> Any:
    yield
    from django.db import connections

    await sync_to_async(connections.close_all, thread_sensitive=True)()


def live_sockets() -> float:
    response = Client().get("/metrics")
    assert response.status_code == 200
    for family in text_string_to_metric_families(response.content.decode()):
        if family.name == "baton_live_sockets":
            return float(family.samples[0].value)
    raise AssertionError("no baton_live_sockets in /metrics")


async def test_the_live_socket_gauge_counts_sockets_as_they_open_and_close(world: Any) -> None:
    client = Client()
    await sync_to_async(client.force_login)(world.supervisor)
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()
    before = await sync_to_async(live_sockets)()
    headers = [(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1"), (b"cookie", cookie)]
    sockets = [WebsocketCommunicator(application, "/ws/live/", headers=headers) for _ in range(2)]
    for socket in sockets:
        assert (await socket.connect(timeout=10))[0]
        await socket.receive_from(timeout=10)  # the hello frame: joined
    assert await sync_to_async(live_sockets)() == before + 2
    for socket in sockets:
        await socket.disconnect()

    async def closed() -> None:
        while await sync_to_async(live_sockets)() != before:
            await asyncio.sleep(0.05)

    await asyncio.wait_for(closed(), timeout=10)
