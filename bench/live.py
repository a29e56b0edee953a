"""Live view benchmark (DESIGN section 11): from an audit event's commit to a WebSocket
client receiving its frame, with 1, 50 and 100 sockets open on the console under uvicorn
(Redis channel layer, Postgres), and the events lost without detection (must be 0).

Floor, from the same run: a Redis round trip (PING). Budget at 100 sockets: p50 <= 20 ms,
p99 <= 100 ms. Run: make bench
"""

from __future__ import annotations

import asyncio
import os
import re
import time

from bench.common import ms, pct, report, service_env, start_web, use_bench_database

EVENTS = int(os.environ.get("BENCH_LIVE_EVENTS", "60"))
SOCKETS = [int(n) for n in os.environ.get("BENCH_LIVE_SOCKETS", "1,50,100").split(",")]
FRAME = re.compile(r'data-seq="(\d+)" data-after="(\d+)"')


async def client(
    url: str,
    cookie: str,
    received: list[tuple[int, int, int]],
    ready: asyncio.Event,
    started: list[int],
) -> None:
    import websockets

    headers = {"Cookie": cookie, "Origin": "http://127.0.0.1"}
    async with websockets.connect(url, additional_headers=headers, max_size=None) as socket:
        hello = await socket.recv()
        assert isinstance(hello, str), hello  # the console sends text frames
        match = FRAME.search(hello)
        assert match, hello
        started.append(int(match[1]))
        ready.set()
        async for message in socket:
            now = time.perf_counter_ns()
            for match in FRAME.finditer(str(message)):
                received.append((int(match[2]), int(match[1]), now))


def measure(count: int, url: str, cookie: str, agent: object) -> tuple[list[float], int, int]:
    from django.db import transaction

    from audit.services import SYSTEM, audit_record
    from audit.verbs import Verb

    async def scenario() -> tuple[list[float], int, int]:
        received: list[list[tuple[int, int, int]]] = [[] for _ in range(count)]
        starts: list[int] = []
        readies = [asyncio.Event() for _ in range(count)]
        tasks = [
            asyncio.create_task(client(url, cookie, received[i], readies[i], starts))
            for i in range(count)
        ]
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 60)
        committed: dict[int, int] = {}

        def commit_one(i: int) -> None:
            with transaction.atomic():
                seq = audit_record(
                    verb=Verb.RUN_QUEUED,
                    actor=SYSTEM,
                    subject_type="run",
                    subject_id=i,
                    agent=agent,
                    payload={"bench": i},
                )
            committed[seq] = time.perf_counter_ns()

        for i in range(EVENTS):
            await asyncio.to_thread(commit_one, i)
            await asyncio.sleep(0.05)
        # Count only after every socket has caught up (or a minute has passed): a frame
        # still on its way is late, not lost.
        newest = max(committed)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(
            frames and frames[-1][1] >= newest for frames in received
        ):
            await asyncio.sleep(0.1)
        for task in tasks:
            task.cancel()
        latencies, undetected, gaps = [], 0, 0
        expected = set(committed)
        for frames in received:
            covered: set[int] = set()
            previous = None
            for after, seq, at in frames:
                if previous is not None and after != previous:
                    gaps += 1
                    # The client sees the break and fetches (previous, after] over HTTP.
                    covered |= {s for s in expected if previous < s <= after}
                previous = seq
                for s in sorted(expected):
                    if after < s <= seq and s not in covered:
                        covered.add(s)
                        latencies.append((at - committed[s]) / 1e9)
            undetected += len(expected - covered)
        return latencies, undetected, gaps

    return asyncio.run(scenario())


def main() -> None:
    db_url = use_bench_database("baton_bench_live")
    import redis
    from django.contrib.auth import get_user_model
    from django.test import Client

    from agents import roles
    from agents.services import agent_create, team_create

    roles.roles_ensure()
    team = team_create(slug="bench", name="Bench")
    agent = agent_create(slug="bench-live", name="Bench", team=team)
    person = get_user_model().objects.create_user("bench-watcher")
    roles.role_grant(user=person, role=roles.SUPERVISOR, target=team)
    browser = Client()
    browser.force_login(person)
    cookie = f"sessionid={browser.cookies['sessionid'].value}"

    env, _ = service_env(db_url)
    port = 8766
    server = start_web(env, port, "bench-live-web.log")
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
            latencies, undetected, gaps = measure(
                count, f"ws://127.0.0.1:{port}/ws/live/", cookie, agent
            )
            p50, p99 = pct(latencies, 0.5), pct(latencies, 0.99)
            rows.append(
                (
                    f"{count} sockets: commit -> frame p50",
                    ms(p50),
                    f"= {p50 / f50:.0f}x floor (budget 20 ms at 100)",
                )
            )
            rows.append(
                (
                    f"{count} sockets: commit -> frame p99",
                    ms(p99),
                    f"= {p99 / f99:.0f}x floor p99 (budget 100 ms at 100)",
                )
            )
            rows.append(
                (
                    f"{count} sockets: lost undetected / gaps",
                    f"{undetected} / {gaps}",
                    f"of {EVENTS * count} deliveries (must be 0 undetected)",
                )
            )
    finally:
        server.terminate()
        server.wait(10)
    print(f"live view benchmark: {EVENTS} events, one every 50 ms")
    report(rows)


if __name__ == "__main__":
    main()
