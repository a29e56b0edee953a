"""Render once, fan out (DESIGN section 8): a web process reads each new event once,
renders it once, and sends one frame per visibility class to every socket of the class;
sockets on any process receive events committed by any other. Counted, never timed."""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from typing import Any

import pytest
import pytest_asyncio
import redis
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from django.db import transaction
from django.test import Client

from audit.models import AuditEvent
from audit.selectors import audit_scope
from audit.services import SYSTEM, audit_record
from audit.verbs import Verb
from console import fanout, live
from tests.conftest import ALLOW_ALL_TESTS, Server, chained, wait_for
from tests.console.test_live import connect, seq_of, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)

STREAM_ITEM = re.compile(r'<li id="event-(\d+)"')


@pytest_asyncio.fixture
async def _close_thread_connections() -> Any:
    yield
    from django.db import connections

    await sync_to_async(connections.close_all, thread_sensitive=True)()


def record(agent: Any = None, team: Any = None, label: str = "") -> int:
    """One audit event, committed (its doorbell rings on commit)."""
    with transaction.atomic():
        return chained(
            audit_record(
                verb=Verb.RUN_QUEUED,
                actor=SYSTEM,
                subject_type="run",
                subject_id=0,
                agent=agent,
                team=team,
                payload={"label": label},
            )
        )


async def frame_with(socket: Any, seq: int) -> str:
    """The first frame a socket is sent that carries event `seq` (or a later one)."""
    while True:
        frame = await socket.receive_from(timeout=10)
        if seq_of(frame)[0] >= seq:
            return frame


@pytest.mark.asyncio
@pytest.mark.usefixtures("_close_thread_connections")
async def test_many_sockets_of_one_class_cost_one_read_and_one_render_per_event(
    world: Any, make_agent: Any
) -> None:
    claims = await sync_to_async(make_agent)(
        "claims-bot", "tests.support.agents.counter", ALLOW_ALL_TESTS
    )
    # Two people with the same grants are one class: five pages each.
    people = [world.supervisor, world.second_supervisor] * 5
    sockets = [await connect(person) for person in people]
    for socket in sockets:
        await socket.receive_from()  # hello
    stats = fanout.renderer().stats
    before = (stats.events_read, stats.renders, stats.frames)

    seq = await sync_to_async(record)(agent=claims, label="one")
    frames = [await frame_with(socket, seq) for socket in sockets]

    assert STREAM_ITEM.findall(frames[0]) == [str(seq)]
    assert len(set(frames)) == 1, "every socket of the class is sent the same bytes"
    after = (stats.events_read, stats.renders, stats.frames)
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1]
    assert len(fanout.renderer().audiences) == 1
    for socket in sockets:
        await socket.disconnect()
    assert not fanout.renderer().audiences, "closed sockets leave their class"


@pytest.mark.asyncio
@pytest.mark.usefixtures("_close_thread_connections")
async def test_each_class_is_sent_what_the_rule_lets_it_see(world: Any, make_agent: Any) -> None:
    claims = await sync_to_async(make_agent)(
        "claims-bot", "tests.support.agents.counter", ALLOW_ALL_TESTS
    )
    helpdesk = await sync_to_async(make_agent)(
        "helpdesk", "tests.support.agents.counter", ALLOW_ALL_TESTS, team=world.support
    )
    sam, sue, cora = (
        await connect(world.supervisor),
        await connect(world.support_supervisor),
        await connect(world.compliance),
    )
    for socket in (sam, sue, cora):
        await socket.receive_from()
    # Every event rings live.everything: with cora's class here, the others' doorbells
    # would only ring the renderer again.
    assert fanout.renderer().joined == {live.EVERYTHING}
    stats = fanout.renderer().stats
    renders = stats.renders

    def both() -> tuple[int, int]:
        with transaction.atomic():  # one commit, one doorbell batch for all classes
            return record(agent=claims, label="c"), record(agent=helpdesk, label="h")

    c, h = await sync_to_async(both)()
    seen = {
        name: STREAM_ITEM.findall(await frame_with(socket, seq))
        for name, socket, seq in (("sam", sam, c), ("sue", sue, h), ("cora", cora, h))
    }
    assert seen == {"sam": [str(c)], "sue": [str(h)], "cora": [str(h), str(c)]}
    assert stats.renders - renders == 2, "each event rendered once, for every class"
    assert await sam.receive_nothing(timeout=0.3) and await sue.receive_nothing(timeout=0.3)
    for socket in (sam, sue, cora):
        await socket.disconnect()


def test_the_rule_in_memory_is_the_rule_in_sql(world: Any, make_agent: Any) -> None:
    """Scope.sees (how the renderer sorts events to classes) picks exactly the events
    Scope.condition() (the pages, the catch-up, the export) selects, for every person."""
    from tests.console.visibility import Cast

    cast = Cast(world, make_agent)
    record(agent=cast.claims_bot)
    record(agent=cast.helpdesk)
    record(team=world.claims)  # about the team as a whole
    record(team=world.support)
    from agents.services import killswitch_engage

    killswitch_engage(scope="global", mode="pause", reason="drill", user=world.supervisor)
    events = list(AuditEvent.objects.all())
    for role in Cast.ROLES:
        scope = audit_scope(type(cast.person(role)).objects.get(pk=cast.person(role).pk))
        by_sql = set(AuditEvent.objects.filter(scope.condition()).values_list("seq", flat=True))
        in_memory = {e.seq for e in events if scope.sees(e)}
        assert in_memory == by_sql, role


# --- two web processes ------------------------------------------------------------------


@pytest.mark.parametrize("chaining", ["inline", "sequencer"])
def test_sockets_on_two_web_processes_receive_an_event_committed_by_a_third(
    chaining: str, task_queue: str, tmp_path: Any, world: Any, make_agent: Any, request: Any
) -> None:
    """Two real console servers (uvicorn processes), a socket on each, and an event
    committed here, in the test's own process: each server's renderer hears the doorbell
    over the Redis channel layer and sends the frame to its socket. With a sequencer (a
    fourth process, as deployed), the doorbell rings once the event is chained."""
    from websockets.sync.client import connect as ws_connect

    if chaining == "sequencer":
        request.getfixturevalue("audit_queued")
        request.getfixturevalue("audit_sequencer")()

    claims = make_agent("claims-bot", "tests.support.agents.counter", ALLOW_ALL_TESTS)
    a = Server(task_queue, tmp_path / "a")
    b = Server(task_queue, tmp_path / "b")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a.start()
    try:
        b.start()
        cookie = session_cookie(world.supervisor).decode()
        with contextlib.ExitStack() as stack:
            sockets = [
                stack.enter_context(
                    ws_connect(
                        f"ws://127.0.0.1:{server.port}/ws/live/",
                        additional_headers={"Cookie": cookie, "Origin": server.url},
                    )
                )
                for server in (a, b)
            ]
            for socket in sockets:
                assert 'data-hello="1"' in str(socket.recv(timeout=10))
            if chaining == "inline":
                seq = record(agent=claims, label="from elsewhere")
            else:
                with transaction.atomic():
                    audit_record(
                        verb=Verb.RUN_QUEUED,
                        actor=SYSTEM,
                        subject_type="run",
                        subject_id=0,
                        agent=claims,
                        payload={"label": "from elsewhere"},
                    )
                seq = wait_for(
                    lambda: (
                        AuditEvent.objects.filter(body__contains="from elsewhere")
                        .values_list("seq", flat=True)
                        .first()
                    ),
                    message="the sequencer to chain the event",
                )
            for socket in sockets:
                frame = str(socket.recv(timeout=10))
                while seq_of(frame)[0] < seq:
                    frame = str(socket.recv(timeout=10))
                assert STREAM_ITEM.findall(frame) == [str(seq)]
    finally:
        b.stop()
        a.stop()


def test_the_catch_up_frame_is_the_socket_frame(world: Any, make_agent: Any) -> None:
    """What a page fetches after a gap is what the socket would have sent: the same
    lines, nothing of one person in it."""
    claims = make_agent("claims-bot", "tests.support.agents.counter", ALLOW_ALL_TESTS)
    seq = record(agent=claims)
    client = Client()
    client.force_login(world.supervisor)
    body = client.get(f"/live/events?after={seq - 1}").content.decode()
    assert STREAM_ITEM.findall(body) == [str(seq)] and "csrf" not in body


def test_the_parts_a_frame_names_are_fetched_per_person(world: Any, make_agent: Any) -> None:
    claims = make_agent("claims-bot", "tests.support.agents.counter", ALLOW_ALL_TESTS)
    helpdesk = make_agent(
        "helpdesk", "tests.support.agents.counter", ALLOW_ALL_TESTS, team=world.support
    )
    sam = Client()
    sam.force_login(world.supervisor)
    body = sam.get(f"/live/parts?agents={claims.pk},{helpdesk.pk}").content.decode()
    assert 'id="agent-claims-bot"' in body and "helpdesk" not in body
    assert "csrfmiddlewaretoken" in body  # sam may stop claims-bot: his own form
    assert sam.get("/live/parts?agents=x").status_code == 400
    sue = Client()
    sue.force_login(world.support_supervisor)
    body = sue.get(f"/live/parts?agents={claims.pk}&switches=1").content.decode()
    assert "claims-bot" not in body and 'id="switch-banners"' in body


def test_the_live_parts_of_a_fleet_are_one_page_of_cards_at_most(world: Any) -> None:
    """At fleet size a frame that changes every card (a kill switch) makes a page fetch
    the cards it shows, not the hundreds its person may see: `all` is one page of the
    overview (the page's own filter and number), and a list is at most a page long."""
    from agents import roles
    from agents.selectors import CARDS_PAGE_SIZE, overview_card_ids
    from bench.fleet import build_fleet

    fleet = build_fleet(teams=3, per_team=20, history=0, prefix="parts")
    for team in fleet.teams:
        roles.role_grant(user=world.supervisor, role=roles.SUPERVISOR, target=team)
    sam = Client()
    sam.force_login(world.supervisor)
    overview = sam.get("/").content.decode()
    shown = re.findall(r'class="card agent[^"]*" id="agent-([\w-]+)" data-agent="(\d+)"', overview)
    assert len(shown) == CARDS_PAGE_SIZE < len(fleet.agents)

    first = sam.get("/live/parts?agents=all").content.decode()
    assert re.findall(r'id="agent-([\w-]+)" data-agent="(\d+)"', first) == shown
    second = sam.get("/live/parts?agents=all&page=2").content.decode()
    on_second = {int(pk) for _, pk in re.findall(r'id="agent-([\w-]+)" data-agent="(\d+)"', second)}
    assert on_second == set(overview_card_ids(world.supervisor, page=2))
    assert len(on_second) == CARDS_PAGE_SIZE and not on_second & {int(pk) for _, pk in shown}
    team = fleet.teams[1].slug
    by_team = sam.get(f"/live/parts?agents=all&team={team}").content.decode()
    assert by_team.count('class="card agent') == 20 and by_team.count(f'id="agent-{team}-') == 20

    ids = ",".join(pk for _, pk in shown)
    assert sam.get(f"/live/parts?agents={ids}").content.decode().count("card agent") == len(shown)
    too_many = ",".join(str(a.pk) for a in fleet.agents[: CARDS_PAGE_SIZE + 1])
    assert sam.get(f"/live/parts?agents={too_many}").status_code == 400
    assert sam.get("/live/parts?agents=all&page=0").status_code == 400


@pytest.mark.asyncio
@pytest.mark.usefixtures("_close_thread_connections")
async def test_frames_waiting_for_a_socket_go_as_one_message_but_never_across_a_gap(
    world: Any, make_agent: Any
) -> None:
    """A socket behind its class sends the frames that follow one another as one frame —
    the catch-up endpoint's frame for those events — and a dropped frame between two
    stays a gap its page sees."""
    from console import frames

    claims = await sync_to_async(make_agent)(
        "claims-bot", "tests.support.agents.counter", ALLOW_ALL_TESTS
    )
    seqs = [await sync_to_async(record)(agent=claims, label=str(n)) for n in range(4)]
    events = await sync_to_async(lambda: list(AuditEvent.objects.filter(seq__in=seqs)))()
    events.sort(key=lambda e: e.seq)
    lines = {e.seq: await sync_to_async(frames.render_event)(e) for e in events}
    start = seqs[0] - 1

    def made(i: int) -> fanout.Frame:  # the renderer's frame of the i-th event alone
        after = seqs[i - 1] if i else start
        text = frames.frame_of_lines([events[i]], after, lines[seqs[i]])
        return fanout.Frame(text, after, seqs[i], [events[i]], lines[seqs[i]])

    one, two, three, four = made(0), made(1), made(2), made(3)
    behind, other = fanout.Outbox(), fanout.Outbox()
    for frame in (fanout.Frame(frames.hello_frame(start), start, start), one, two, four):
        behind.put_nowait(frame)  # `three` was dropped: no room for it
    for frame in (one, two, three):
        other.put_nowait(frame)

    hello = await behind.get()
    assert seq_of(hello.text) == (start, start) and hello.frames == 1, "a hello goes alone"
    joined = await behind.get()
    assert joined.frames == 2 and seq_of(joined.text) == (seqs[1], start)
    assert STREAM_ITEM.findall(joined.text) == [str(seqs[1]), str(seqs[0])]
    catch_up = await sync_to_async(frames.render_frames)(events[:2], start)
    assert joined.text == catch_up[0], "the same frame the page would fetch over HTTP"
    after_gap = await behind.get()
    assert after_gap.frames == 1 and seq_of(after_gap.text) == (seqs[3], seqs[2])
    # Another socket of the class, behind by the same frames: the same joined bytes.
    assert (await other.get()).text == fanout.join([one, two, three])
    assert behind.queue.empty() and behind.held is None


def _blocked_receives(client: Any) -> int:
    """Receives of this test's Redis database blocked in BZPOPMIN: one per layer instance
    receiving (a Redis layer receives for all the channels of an instance at once)."""
    db = client.connection_pool.connection_kwargs.get("db", 0)
    return sum(
        c.get("cmd") == "bzpopmin" and int(c.get("db", -1)) == db and "b" in c.get("flags", "")
        for c in client.client_list()
    )


@pytest.mark.asyncio
@pytest.mark.usefixtures("_close_thread_connections")
async def test_a_socket_closing_does_not_take_the_renderers_doorbell_with_it(
    world: Any, make_agent: Any, settings: Any
) -> None:
    """Channels cancels a consumer's receive when its socket closes. On the Redis layer's
    shared instance that receive may be the one that popped the next message of the whole
    process — here the renderer's doorbell — and the message would go with it: the
    renderer would not read until its re-check. It receives on an instance of its own."""
    settings.BATON_LIVE_RECHECK_SECONDS = 60  # only a doorbell wakes the renderer here
    layer = get_channel_layer()
    assert type(layer).__name__ == "RedisChannelLayer"
    client = redis.Redis.from_url(settings.REDIS_URL)
    # A consumer's receive on the default instance, blocked in Redis before the renderer's.
    closing = asyncio.ensure_future(layer.receive(await layer.new_channel()))
    while _blocked_receives(client) < 1:
        await asyncio.sleep(0.01)
    socket = await connect(world.supervisor)
    await socket.receive_from()  # hello: the renderer has joined its groups
    renderer = fanout.renderer()
    reads = renderer.stats.reads
    group = sorted(renderer.joined)[0]
    # With this loop held, the doorbell goes out from another thread and Redis hands it to
    # whichever receive is blocked; then the consumer's receive is cancelled, as a socket
    # closing cancels it, before this loop has read Redis's reply.
    sender = threading.Thread(
        target=async_to_sync(layer.group_send), args=(group, {"type": live.DOORBELL})
    )
    sender.start()
    sender.join()
    closing.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await closing
    for _ in range(2000):  # at most 20 s, far below the 60 s re-check
        if renderer.stats.reads > reads:
            break
        await asyncio.sleep(0.01)
    await socket.disconnect()
    assert renderer.stats.reads > reads, "the renderer's doorbell was lost with the receive"
