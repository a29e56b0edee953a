"""Live view benchmark (DESIGN section 11): from an audit event's commit to a WebSocket
client receiving its frame, with many sockets spread over two web processes (uvicorn,
Redis channel layer, Postgres) at 50 events/s, and the events lost without detection
(must be 0).

Half the sockets are a supervisor of team A (they see team A's events), half a compliance
officer (every event): two visibility classes. Events alternate between an agent of team
A and one of team B. The sockets are opened by client processes of their own (the
receiving is Python work too, and must not sit in the loop that commits); times are
CLOCK_MONOTONIC, which processes on one machine share.

Floor, from the same run: a Redis round trip (PING). Budget at 1,000 sockets over two web
processes: p50 <= 20 ms, p99 <= 100 ms. Run: make bench
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import re
import time
from typing import Any

from bench.common import ms, pct, report, service_env, start_web, use_bench_database

RATE = 50  # events per second
EVENTS = int(os.environ.get("BENCH_LIVE_EVENTS", "500"))
SOCKETS = [int(n) for n in os.environ.get("BENCH_LIVE_SOCKETS", "100,1000").split(",")]
CLIENTS = int(os.environ.get("BENCH_LIVE_CLIENTS", "2"))  # client processes
FRAME = re.compile(r'data-seq="(\d+)" data-after="(\d+)"')
PORTS = (8766, 8767)

Frames = list[tuple[int, int, int]]  # (after, seq, received at)


async def _socket(url: str, cookie: str, origin: str, frames: Frames, ready: Any) -> None:
    import websockets

    headers = {"Cookie": cookie, "Origin": origin}
    # A thousand handshakes on a busy machine take longer than websockets' default 10 s
    # open timeout; a socket that gave up would leave the run waiting for it.
    async with websockets.connect(
        url, additional_headers=headers, max_size=None, open_timeout=120
    ) as socket:
        hello = await socket.recv()
        match = FRAME.search(str(hello))
        assert match, hello
        frames.append((int(match[1]), int(match[1]), 0))  # where it starts
        ready()
        async for message in socket:
            now = time.monotonic_ns()
            for match in FRAME.finditer(str(message)):
                frames.append((int(match[2]), int(match[1]), now))


def clients(
    sockets: list[tuple[str, str, str, set[int]]],
    ready: Any,
    newest: Any,
    caught_up: Any,
    results: Any,
    index: int,
) -> None:
    """A client process: open its sockets, say when all have said hello, and once the
    benchmark has committed its last event, wait until every socket has it (at most a
    minute: a frame still on its way is late, not lost) and hand back what each got."""

    async def run() -> list[Frames]:
        received: list[Frames] = [[] for _ in sockets]
        opened = 0

        def one_ready() -> None:
            nonlocal opened
            opened += 1
            if opened == len(sockets):
                ready.release()

        tasks = []
        for i, (url, cookie, origin, _) in enumerate(sockets):
            tasks.append(asyncio.create_task(_socket(url, cookie, origin, received[i], one_ready)))
            if i % 50 == 49:
                await asyncio.sleep(0.05)  # not a thousand handshakes in one instant
        while 0 in newest[:]:
            await asyncio.sleep(0.05)
            failed = [t for t in tasks if t.done() and t.exception() is not None]
            if failed:
                raise RuntimeError(f"{len(failed)} sockets failed") from failed[0].exception()
        deadline = time.monotonic() + 60
        # Each socket until it has the last event its person may see.
        last = [max(newest[t] for t in sees) for (_, _, _, sees) in sockets]
        while time.monotonic() < deadline and not all(
            f and f[-1][1] >= n for f, n in zip(received, last, strict=True)
        ):
            await asyncio.sleep(0.1)
        caught_up.release()  # before closing: the web processes' CPU is read then
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return received

    results.put((index, asyncio.run(run())))


def cpu_seconds(pid: int) -> float:
    """A process's CPU time so far (user + system), from /proc: where the web processes'
    time goes, per frame sent."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    count: int, people: list[tuple[str, Any]], agents: list[Any], web: list[int]
) -> dict[str, Any]:
    from django.db import transaction

    from audit.models import AuditEvent
    from audit.services import SYSTEM, audit_flush, audit_record
    from audit.verbs import Verb

    # Sockets alternate between the web processes and between the people (classes).
    sockets = []
    for i in range(count):
        port = PORTS[i % len(PORTS)]
        cookie, sees = people[(i // len(PORTS)) % len(people)]
        url, origin = f"ws://127.0.0.1:{port}/ws/live/", f"http://127.0.0.1:{port}"
        sockets.append((url, cookie, origin, sees))
    sees = [people[(i // len(PORTS)) % len(people)][1] for i in range(count)]
    ctx = multiprocessing.get_context("spawn")
    ready, newest, results = ctx.Semaphore(0), ctx.Array("q", len(agents)), ctx.Queue()
    caught_up = ctx.Semaphore(0)
    shares = [list(range(c, count, CLIENTS)) for c in range(CLIENTS)]
    procs = [
        ctx.Process(
            target=clients,
            args=([sockets[i] for i in share], ready, newest, caught_up, results, c),
            daemon=True,  # a run that fails must not wait for its clients at exit
        )
        for c, share in enumerate(shares)
    ]
    for proc in procs:
        proc.start()
    for _ in procs:
        assert ready.acquire(timeout=120), "the sockets did not all open"

    written: dict[int, tuple[int, int]] = {}  # event i -> (commit time, team index)
    committed: dict[int, tuple[int, int]] = {}  # seq -> (commit time, team index)
    cpu_before = sum(cpu_seconds(pid) for pid in web)
    clients_before = sum(cpu_seconds(proc.pid) for proc in procs if proc.pid)
    start = time.monotonic()
    for i in range(EVENTS):
        target = start + i / RATE
        wait = target - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        agent = agents[i % len(agents)]
        with transaction.atomic():
            audit_record(
                verb=Verb.RUN_QUEUED,
                actor=SYSTEM,
                subject_type="run",
                subject_id=f"{count}.{i}",  # this measure's events, not an earlier one's
                agent=agent,
                payload={"bench": i},
            )
        written[i] = (time.monotonic_ns(), i % len(agents))
    elapsed = time.monotonic() - start
    # The sequencer gives the numbers (a frame carries its event's); find each event's.
    audit_flush()
    for seq, subject in AuditEvent.objects.filter(
        verb="run.queued", subject_id__in=[f"{count}.{i}" for i in written]
    ).values_list("seq", "subject_id"):
        committed[seq] = written[int(subject.split(".")[1])]
    # The newest event of each team (index into `agents`), for the clients to wait for.
    newest[:] = [
        max(s for s, (_, t) in committed.items() if t == team) for team in range(len(agents))
    ]
    for _ in procs:
        caught_up.acquire(timeout=120)
    cpu = sum(cpu_seconds(pid) for pid in web) - cpu_before
    clients_cpu = sum(cpu_seconds(proc.pid) for proc in procs if proc.pid) - clients_before
    window = time.monotonic() - start
    received: list[Frames] = [[] for _ in range(count)]
    for _ in procs:
        c, frames = results.get(timeout=180)
        for i, got in zip(shares[c], frames, strict=True):
            received[i] = got
    for proc in procs:
        proc.join(30)

    latencies, undetected, gaps, deliveries = [], 0, 0, 0
    first: dict[int, float] = {}  # seq -> the earliest any socket received it
    for i, frames in enumerate(received):
        expected = {s for s, (_, team) in committed.items() if team in sees[i]}
        deliveries += len(expected)
        covered: set[int] = set()
        _, previous, _ = frames[0]  # the hello: the socket starts after this event
        for after, seq, at in frames[1:]:
            if after > previous:
                gaps += 1
                # The page sees the break and fetches (previous, after] over HTTP.
                covered |= {s for s in expected if previous < s <= after}
            for s in expected:
                if after < s <= seq and s not in covered:
                    covered.add(s)
                    latencies.append((at - committed[s][0]) / 1e9)
                    first[s] = min(first.get(s, latencies[-1]), latencies[-1])
            previous = max(previous, seq)
        undetected += len(expected - covered)
    return {
        "latencies": latencies,
        "first": list(first.values()),
        "undetected": undetected,
        "gaps": gaps,
        "deliveries": deliveries,
        "rate": EVENTS / elapsed,
        "cpu": cpu,
        "clients_cpu": clients_cpu,
        "window": window,
        "messages": sum(len(f) - 1 for f in received),
    }


def main() -> None:
    db_url = use_bench_database(os.environ.get("BENCH_DB", "baton_bench_live"))
    import redis
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.test import Client

    from agents import roles
    from agents.services import agent_create, team_create

    roles.roles_ensure()
    teams = [team_create(slug=f"bench-{t}", name=f"Bench {t}") for t in ("a", "b")]
    agents = [
        agent_create(slug=f"bench-live-{n}", name=f"Bench {n}", team=team)
        for n, team in enumerate(teams)
    ]
    users = get_user_model().objects
    supervisor = users.create_user("bench-supervisor")
    roles.role_grant(user=supervisor, role=roles.SUPERVISOR, target=teams[0])
    compliance = users.create_user("bench-compliance")
    compliance.groups.add(Group.objects.get(name=roles.COMPLIANCE))

    def cookie(person: Any) -> str:
        browser = Client()
        browser.force_login(person)
        return f"sessionid={browser.cookies['sessionid'].value}"

    # (cookie, the teams whose events the person sees, by index into `agents`)
    people = [(cookie(supervisor), {0}), (cookie(compliance), {0, 1})]

    env, _ = service_env(db_url)
    servers = [start_web(env, port, f"bench-live-web-{port}.log") for port in PORTS]
    rows = []
    try:
        client = redis.Redis.from_url(os.environ["REDIS_URL"])
        pings = []
        for _ in range(500):
            t = time.perf_counter_ns()
            client.ping()
            pings.append((time.perf_counter_ns() - t) / 1e9)
        f50, f99 = pct(pings, 0.5), pct(pings, 0.99)
        rows.append(("floor: Redis round trip p50", ms(f50), f"p99 {ms(f99)}"))
        for count in SOCKETS:
            got = measure(count, people, agents, [server.pid for server in servers])
            p50, p99 = pct(got["latencies"], 0.5), pct(got["latencies"], 0.99)
            rows.append(
                (
                    f"{count} sockets: commit -> frame p50",
                    ms(p50),
                    f"= {p50 / f50:.0f}x floor (budget 20 ms at 1,000)",
                )
            )
            rows.append(
                (
                    f"{count} sockets: commit -> frame p99",
                    ms(p99),
                    f"= {p99 / f99:.0f}x floor p99 (budget 100 ms at 1,000)",
                )
            )
            rows.append(
                (
                    f"{count} sockets: commit -> first socket's frame p50",
                    ms(pct(got["first"], 0.5)),
                    f"p99 {ms(pct(got['first'], 0.99))} (the rest is the fan-out to all)",
                )
            )
            rows.append(
                (
                    f"{count} sockets: lost undetected / gaps",
                    f"{got['undetected']} / {got['gaps']}",
                    f"of {got['deliveries']} deliveries (must be 0 undetected); "
                    f"{got['rate']:.0f} events/s committed",
                )
            )
            rows.append(
                (
                    f"{count} sockets: web CPU per message",
                    f"{got['cpu'] / max(got['messages'], 1) * 1e6:.1f} us",
                    f"{got['cpu']:.1f} s CPU of the {len(servers)} web processes in "
                    f"{got['window']:.1f} s, for {got['messages']} WebSocket messages "
                    f"carrying {got['deliveries']} deliveries; clients {got['clients_cpu']:.1f} s",
                )
            )
    finally:
        for server in servers:
            server.terminate()
            server.wait(10)
    print(
        f"live view benchmark: {EVENTS} events at {RATE}/s, sockets over {len(PORTS)} web "
        f"processes, {CLIENTS} client processes"
    )
    report(rows)


if __name__ == "__main__":
    main()
