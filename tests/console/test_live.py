"""The live socket, through the real ASGI stack (Origin check, session auth) and the
Redis channel layer, against Postgres."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import pytest
import pytest_asyncio
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from agents import roles
from agents.services import killswitch_engage, run_start
from console.asgi import application
from console.consumers import CLOSE_FORBIDDEN, CLOSE_UNAUTHENTICATED
from tests.conftest import ALLOW_ALL_TESTS

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

ORIGIN = (b"origin", b"http://127.0.0.1")


@pytest_asyncio.fixture(autouse=True)
async def _close_thread_connections() -> Any:
    yield
    # The consumer's database calls ran on asgiref's thread; close its connection so the
    # test database can be flushed and dropped.
    from django.db import connections

    await sync_to_async(connections.close_all, thread_sensitive=True)()


def session_cookie(user: Any) -> bytes:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


async def connect(user: Any | None, origin: tuple[bytes, bytes] = ORIGIN) -> Any:
    headers = [origin, (b"host", b"127.0.0.1")]
    if user is not None:
        headers.append((b"cookie", await sync_to_async(session_cookie)(user)))
    socket = WebsocketCommunicator(application, "/ws/live/", headers=headers)
    connected, _ = await socket.connect()
    return socket if connected else None


def seq_of(frame: str) -> tuple[int, int]:
    m = re.search(r'data-seq="(\d+)" data-after="(\d+)"', frame)
    assert m, frame
    return int(m[1]), int(m[2])


async def opened(user: Any | None, origin: tuple[bytes, bytes] = ORIGIN) -> tuple[bool, Any]:
    headers = [origin, (b"host", b"127.0.0.1")]
    if user is not None:
        headers.append((b"cookie", await sync_to_async(session_cookie)(user)))
    socket = WebsocketCommunicator(application, "/ws/live/", headers=headers)
    connected, code = await socket.connect()
    if connected:
        await socket.disconnect()
    return connected, code


@pytest.mark.parametrize(
    "origin",
    [
        b"https://evil.example",
        b"http://evil.example",
        b"https://127.0.0.1",  # another scheme
        b"http://127.0.0.1:8443",  # another port
        b"http://localhost",  # an allowed host, but not the one the page came from
        b"null",
    ],
)
async def test_a_socket_from_another_origin_is_refused_despite_a_valid_session(
    world: Any, origin: bytes
) -> None:
    assert await opened(world.supervisor, (b"origin", origin)) == (False, CLOSE_FORBIDDEN)
    assert await opened(world.supervisor) == (True, None)


async def test_an_anonymous_socket_is_refused(world: Any) -> None:
    assert await opened(None) == (False, CLOSE_UNAUTHENTICATED)


# --- the periodic re-check reloads the person ------------------------------------------


@pytest.fixture
def brisk(settings: Any) -> None:
    settings.BATON_LIVE_RECHECK_SECONDS = 0.1


async def closed_with(socket: Any) -> Any:
    """The close the socket ends with, skipping any frames before it."""
    while True:
        message = await socket.receive_output(timeout=10)
        if message["type"] == "websocket.close":
            return message["code"]


async def test_removing_the_compliance_role_stops_the_stream(world: Any, brisk: None) -> None:
    from django.contrib.auth.models import Group

    socket = await connect(world.compliance)
    await socket.receive_from()
    compliance = await sync_to_async(Group.objects.get)(name=roles.COMPLIANCE)
    await sync_to_async(world.compliance.groups.remove)(compliance)
    assert await closed_with(socket) == CLOSE_FORBIDDEN


async def test_revoking_a_grant_stops_the_stream(world: Any, brisk: None) -> None:
    socket = await connect(world.supervisor)
    await socket.receive_from()
    await sync_to_async(roles.role_revoke)(
        user=world.supervisor, role=roles.SUPERVISOR, target=world.claims
    )
    assert await closed_with(socket) == CLOSE_FORBIDDEN


async def test_deactivating_a_person_closes_their_socket(world: Any, brisk: None) -> None:
    socket = await connect(world.supervisor)
    await socket.receive_from()
    await sync_to_async(type(world.supervisor).objects.filter(pk=world.supervisor.pk).update)(
        is_active=False
    )
    assert await closed_with(socket) == CLOSE_UNAUTHENTICATED


async def test_an_ended_session_closes_the_socket(world: Any, brisk: None) -> None:
    from django.contrib.sessions.models import Session

    socket = await connect(world.supervisor)
    await socket.receive_from()
    await sync_to_async(Session.objects.all().delete)()  # expired and cleared, or revoked
    assert await closed_with(socket) == CLOSE_UNAUTHENTICATED


async def test_a_person_receives_only_the_events_of_agents_they_may_see(
    world: Any,
    make_agent: Any,
) -> None:
    claims = await sync_to_async(make_agent)(
        "claims-bot", "tests.support.agents.counter", ALLOW_ALL_TESTS
    )
    support = await sync_to_async(make_agent)(
        "support-bot", "tests.support.agents.counter", ALLOW_ALL_TESTS, team=world.support
    )
    sam, sue = await connect(world.supervisor), await connect(world.support_supervisor)
    hello_sam, hello_sue = await sam.receive_from(), await sue.receive_from()
    start = seq_of(hello_sam)[0]
    assert 'data-hello="1"' in hello_sam and seq_of(hello_sue)[0] == start

    run = await sync_to_async(run_start)(agent=claims, input={"label": "a"})
    frame = await sam.receive_from(timeout=5)
    seq, after = seq_of(frame)
    assert after == start and seq > start
    assert f"run #{run.pk}" in frame and "run.queued" in frame
    assert await sue.receive_nothing(timeout=0.5)

    other = await sync_to_async(run_start)(agent=support, input={"label": "b"})
    frame = await sue.receive_from(timeout=5)
    assert f"run #{other.pk}" in frame
    assert seq_of(frame)[1] == start, "sue's frames follow on from her own last one"
    assert await sam.receive_nothing(timeout=0.5)
    await sam.disconnect()
    await sue.disconnect()


async def test_a_kill_switch_reaches_everyone_with_its_banner(world: Any, make_agent: Any) -> None:
    await sync_to_async(make_agent)("claims-bot", "tests.support.agents.counter", ALLOW_ALL_TESTS)
    sue = await connect(world.support_supervisor)
    await sue.receive_from()
    await sync_to_async(killswitch_engage)(
        scope="global", mode="pause", reason="incident 7", user=world.supervisor
    )
    frame = await sue.receive_from(timeout=5)
    assert "killswitch.engaged" in frame and "incident 7" in frame
    # The banner holds the person's release form: the frame only says it changed, and
    # the page fetches it as that person.
    assert 'data-changed="approvals switches agents"' in frame
    assert 'id="switch-banners"' not in frame and "csrfmiddlewaretoken" not in frame
    client = Client()
    await sync_to_async(client.force_login)(world.support_supervisor)
    parts = (await sync_to_async(client.get)("/live/parts?switches=1")).content.decode()
    assert 'id="switch-banners"' in parts and "incident 7" in parts
    await sue.disconnect()


async def test_logging_out_closes_the_socket(world: Any) -> None:
    client = Client()
    await sync_to_async(client.force_login)(world.supervisor)
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()
    socket = WebsocketCommunicator(
        application, "/ws/live/", headers=[ORIGIN, (b"host", b"127.0.0.1"), (b"cookie", cookie)]
    )
    assert (await socket.connect())[0]
    await socket.receive_from()
    await sync_to_async(client.post)("/logout/")
    closed = await socket.receive_output(timeout=5)
    assert closed == {"type": "websocket.close", "code": 4401}


async def test_the_catch_up_endpoint_sends_what_was_missed_and_checks_its_input(
    world: Any,
    make_agent: Any,
) -> None:
    claims = await sync_to_async(make_agent)(
        "claims-bot", "tests.support.agents.counter", ALLOW_ALL_TESTS
    )
    client = Client()
    await sync_to_async(client.force_login)(world.supervisor)
    run = await sync_to_async(run_start)(agent=claims, input={"label": "a"})
    page = await sync_to_async(client.get)("/live/events?after=0")
    assert page.status_code == 200 and f"run #{run.pk}" in page.content.decode()
    for query in ("after=x", "after=5&upto=2", "after=-1", ""):
        assert (await sync_to_async(client.get)(f"/live/events?{query}")).status_code == 400
    outsider = Client()
    await sync_to_async(outsider.force_login)(world.outsider)
    body = (await sync_to_async(outsider.get)("/live/events?after=0")).content.decode()
    assert f"run #{run.pk}" not in body


# --- a browser that goes away ----------------------------------------------------------


def recheck_tasks() -> list[asyncio.Task[Any]]:
    return [
        t
        for t in asyncio.all_tasks()
        if getattr(t.get_coro(), "__name__", "") == "_serve_forever" and not t.done()
    ]


async def test_a_browser_gone_mid_send_leaves_no_recheck_task_and_no_error(
    world: Any, make_agent: Any, brisk: None, caplog: Any
) -> None:
    from uvicorn.protocols.utils import ClientDisconnected

    claims = await sync_to_async(make_agent)(
        "claims-bot", "tests.support.agents.counter", ALLOW_ALL_TESTS
    )
    gone = asyncio.Event()

    async def server(scope: Any, receive: Any, send: Any) -> Any:
        # As uvicorn does: once the browser has gone, a send raises ClientDisconnected
        # (the disconnect message may still be on its way to the consumer).
        async def send_to_browser(message: Any) -> None:
            if gone.is_set():
                raise ClientDisconnected
            await send(message)

        return await application(scope, receive, send_to_browser)

    headers = [ORIGIN, (b"host", b"127.0.0.1")]
    headers.append((b"cookie", await sync_to_async(session_cookie)(world.supervisor)))
    socket = WebsocketCommunicator(server, "/ws/live/", headers=headers)
    assert (await socket.connect())[0]
    await socket.receive_from()
    assert len(recheck_tasks()) == 1
    gone.set()
    await sync_to_async(run_start)(agent=claims, input={"label": "a"})  # a frame to send

    async def ended() -> None:
        while recheck_tasks():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(ended(), timeout=10)
    assert not [r for r in caplog.records if "re-check failed" in r.getMessage()]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
