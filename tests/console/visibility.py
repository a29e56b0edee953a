"""A world with three agents in two teams and a person for every kind of access, and
readers of the four surfaces where events are shown: the audit pages, the live socket,
the catch-up endpoint and the export. Shared by the visibility and permission-matrix
tests."""

from __future__ import annotations

import html
import json
import re
from typing import Any

from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.test import Client

from agents import roles
from console.asgi import application
from tests.conftest import ALLOW_ALL_TESTS

ORIGIN = (b"origin", b"http://127.0.0.1")
HOST = (b"host", b"127.0.0.1")
ROW = re.compile(r'<tr id="event-(\d+)"')
OLDER = re.compile(r'<a href="([^"]+)"[^>]*rel="next"')
STREAM_ITEM = re.compile(r'<li id="event-(\d+)"')
FRAME = re.compile(r'id="live-frame"[^>]*data-seq="(\d+)" data-after="(\d+)"')


class Cast:
    """The people of the matrix, by the access they have (deactivated: logged in, then
    deactivated; their session is still there)."""

    ROLES = (
        "compliance",
        "supervisor",  # of team claims
        "other_supervisor",  # of team support
        "one_agent",  # granted agent claims-bot only
        "admin",  # agent admin of team claims
        "no_role",
        "deactivated",
    )

    def __init__(self, world: Any, make_agent: Any) -> None:
        self.world = world
        self.claims_bot = make_agent("claims-bot", "tests.support.agents.counter", ALLOW_ALL_TESTS)
        self.claims_other = make_agent(
            "claims-other", "tests.support.agents.counter", ALLOW_ALL_TESTS
        )
        self.helpdesk = make_agent(
            "helpdesk", "tests.support.agents.counter", ALLOW_ALL_TESTS, team=world.support
        )
        users = get_user_model().objects
        self.people: dict[str, Any] = {
            "compliance": world.compliance,
            "supervisor": world.supervisor,
            "other_supervisor": world.support_supervisor,
            "admin": world.admin,
            "no_role": world.outsider,
        }
        one = users.create_user("olga")
        roles.role_grant(user=one, role=roles.SUPERVISOR, target=self.claims_bot)
        self.people["one_agent"] = one
        gone = users.create_user("gus")
        roles.role_grant(user=gone, role=roles.SUPERVISOR, target=world.support)
        self.people["deactivated"] = gone
        self.clients = {name: logged_in(person) for name, person in self.people.items()}
        users.filter(pk=gone.pk).update(is_active=False)

    def person(self, role: str) -> Any:
        return self.people[role]


def logged_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def cookie(client: Client) -> bytes:
    return f"sessionid={client.cookies['sessionid'].value}".encode()


async def open_socket(
    client: Client | None, origin: tuple[bytes, bytes] = ORIGIN
) -> tuple[WebsocketCommunicator, bool, int | None]:
    headers = [origin, HOST]
    if client is not None:
        headers.append((b"cookie", cookie(client)))
    socket = WebsocketCommunicator(application, "/ws/live/", headers=headers)
    connected, code = await socket.connect(timeout=10)
    return socket, connected, code


def frame_seq(frame: str) -> int:
    m = FRAME.search(frame)
    assert m, frame
    return int(m[1])


async def live_seqs(socket: WebsocketCommunicator, until: int) -> tuple[set[int], str]:
    """The events a socket is sent until it has carried event `until` (which its person
    must see), and everything it was sent."""
    seen: set[int] = set()
    text = ""
    while True:
        frame = await socket.receive_from(timeout=10)
        text += frame
        seen |= {int(s) for s in STREAM_ITEM.findall(frame)}
        if frame_seq(frame) >= until:
            return seen, text


def catch_up_seqs(client: Client, after: int, upto: int) -> tuple[set[int], str]:
    response = client.get(f"/live/events?after={after}&upto={upto}")
    assert response.status_code == 200
    text = response.content.decode()
    return {int(s) for s in STREAM_ITEM.findall(text)}, text


def audit_seqs(client: Client, after: int, upto: int) -> tuple[set[int], str]:
    """Every event the audit pages list in (after, upto], walking the pages."""
    seen: set[int] = set()
    text = ""
    url = "/audit/"
    while url:
        response = client.get(url)
        assert response.status_code == 200, url
        page = response.content.decode()
        text += page
        shown = [int(s) for s in ROW.findall(page)]
        seen |= {s for s in shown if after < s <= upto}
        found = OLDER.search(page)
        url = html.unescape(found.group(1)) if found and shown and min(shown) > after else ""
    return seen, text


def export(client: Client) -> Any:
    # The export is a GET today and a POST with CSRF once it writes only on purpose.
    response = client.get("/audit/export?format=jsonl")
    if response.status_code == 405:
        response = client.post("/audit/export", {"format": "jsonl"})
    return response


def export_seqs(response: Any, after: int, upto: int) -> tuple[set[int], str]:
    text = b"".join(response.streaming_content).decode()
    records = [json.loads(line) for line in text.splitlines() if line]
    seqs = {r["seq"] for r in records if r["type"] == "event" and after < r["seq"] <= upto}
    events = "\n".join(json.dumps(r) for r in records if r["type"] == "event")
    return seqs, events


async def surfaces(cast: Cast, role: str, socket: Any, start: int, end: int) -> dict[str, Any]:
    """What each surface shows the person of `role` of the events in (start, end]: a set
    of seqs, or the status code that refused them."""
    client = cast.clients[role]
    shown: dict[str, Any] = {}
    if socket is None:
        shown["live"] = "refused"
    else:
        shown["live"] = (await live_seqs(socket, end))[0]
    catch_up = await sync_to_async(client.get)(f"/live/events?after={start}&upto={end}")
    shown["catch-up"] = (
        {int(s) for s in STREAM_ITEM.findall(catch_up.content.decode())}
        if catch_up.status_code == 200
        else catch_up.status_code
    )
    first = await sync_to_async(client.get)("/audit/")
    shown["audit"] = (
        (await sync_to_async(audit_seqs)(client, start, end))[0]
        if first.status_code == 200
        else first.status_code
    )
    exported = await sync_to_async(export)(client)
    shown["export"] = (
        (await sync_to_async(export_seqs)(exported, start, end))[0]
        if exported.status_code == 200
        else exported.status_code
    )
    return shown
