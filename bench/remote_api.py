"""Remote API benchmark (issue 12): submit → decision for allowed steps over HTTP, through
the real path — the console under uvicorn (console.asgi), django-ninja, the API key check,
the one gateway decision core (agents.remote → agents.gateway), Postgres.

A remote agent with an allow-all policy and a key; each step is a new seq of `bench.noop`
in a run of RUN_STEPS steps (a new run after that: the gateway reads a run's journal whole
at each step, so a longer run costs more a step — the last row measures that). The figure
is the POST /api/v1/runs/{run}/steps round trip alone, its answer `allow`; each step's
result is then reported (POST …/steps/{seq}/result, not in the latency) so the runs are
the real sequence. httpx with keep-alive, one connection per client.

- Latency: one client, sequential; the floors' requests interleaved with the steps so the
  machine's drift touches all alike.
- Rate: N clients (threads, each its own connection and runs) for RATE_SECONDS each:
  steps/s (submit + report, two requests) and API requests/s, beside the floors' rate
  with the same number of clients.

Floors, from the same run and the same server process: a bare Django JSON view
(bench.urls, mounted only by bench.settings: the middleware, no database, no key) and
GET /api/v1/agent (the key check and one read).
Run: python -m bench.remote_api   (BATON_AGENT_MODULES must include bench.support)
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from bench.common import ms, pct, report, service_env, start_web, use_bench_database
from bench.remote_longpoll import free_port

STEPS = int(os.environ.get("BENCH_API_STEPS", "1000"))
RUN_STEPS = 50
CLIENTS = (1, 4, 8)
RATE_SECONDS = float(os.environ.get("BENCH_API_RATE_SECONDS", "5"))
WARM_UP = 30
LONG_RUN = 500  # steps in the one long run of the last row
BARE = "/bench/json"  # bench.urls


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class Agent:
    """The remote agent's side: one keep-alive connection, its own runs, the next seq."""

    def __init__(self, url: str, key: str, run_steps: int = RUN_STEPS) -> None:
        self.http = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30
        )
        self.run_steps = run_steps
        self.run = 0
        self.seq = run_steps  # starts a run at the first step

    def close(self) -> None:
        self.http.close()

    def _next(self) -> None:
        if self.seq >= self.run_steps:
            if self.run:
                self.http.post(f"/api/v1/runs/{self.run}/finish", json={"output": {}})
            answer = self.http.post("/api/v1/runs", json={"input": {"bench": "api"}})
            assert answer.status_code == 201, answer.text
            self.run, self.seq = answer.json()["run"], 0
        self.seq += 1

    def submit(self) -> float:
        """One allowed step; the submit's round trip in seconds (the report not counted)."""
        self._next()
        body = {"seq": self.seq, "tool": "bench.noop", "args": {"i": self.seq}}
        started = time.perf_counter_ns()
        answer = self.http.post(f"/api/v1/runs/{self.run}/steps", json=body)
        took = (time.perf_counter_ns() - started) / 1e9
        assert answer.status_code == 200 and answer.json()["decision"] == "allow", answer.text
        done = self.http.post(
            f"/api/v1/runs/{self.run}/steps/{self.seq}/result",
            json={"ok": True, "result": {"i": self.seq}},
        )
        assert done.status_code == 200, done.text
        return took

    def timed_get(self, path: str) -> float:
        started = time.perf_counter_ns()
        answer = self.http.get(path)
        took = (time.perf_counter_ns() - started) / 1e9
        assert answer.status_code == 200, answer.text
        return took


def rate(make: Callable[[], Agent], clients: int, work: Callable[[Agent], Any]) -> float:
    """Operations per second with `clients` threads doing `work` back to back."""
    agents = [make() for _ in range(clients)]
    for agent in agents:
        work(agent)  # connected, and a run started
    counts = [0] * clients
    barrier = threading.Barrier(clients + 1)
    stop = threading.Event()

    def loop(i: int) -> None:
        barrier.wait()
        while not stop.is_set():
            work(agents[i])
            counts[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    time.sleep(RATE_SECONDS)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    for agent in agents:
        agent.close()
    return sum(counts) / elapsed


def main() -> None:
    db_url = use_bench_database(os.environ.get("BENCH_DATABASE", "baton_bench_remote_api"))
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from agents.models import Agent as AgentModel
    from agents.remote import apikey_create
    from agents.services import agent_create, team_create, version_create, version_publish

    team = team_create(slug="bench", name="Bench")
    agent = agent_create(slug="bench-api", name="Bench API", team=team, kind=AgentModel.Kind.REMOTE)
    version_publish(
        version=version_create(
            agent=agent, program="", policy={"rules": [{"tool": "*", "effect": "allow"}]}
        ),
        user=None,
        reason="benchmark set-up",
    )
    key = apikey_create(agent=agent, name="bench", user=None)[1]

    env, _queue = service_env(db_url, DJANGO_SETTINGS_MODULE="bench.settings")
    port = free_port()
    server = start_web(env, port, "bench-remote-api-web.log")
    url = f"http://127.0.0.1:{port}"
    bare: list[float] = []
    agent_reads: list[float] = []
    steps: list[float] = []
    long_run: list[float] = []
    rates: list[tuple[int, float, float, float]] = []
    loads = [load()]
    try:
        client = Agent(url, key)
        for _ in range(WARM_UP):
            client.submit()
            client.timed_get(BARE)
            client.timed_get("/api/v1/agent")
        for _ in range(STEPS):
            bare.append(client.timed_get(BARE))
            agent_reads.append(client.timed_get("/api/v1/agent"))
            steps.append(client.submit())
        client.close()
        loads.append(load())

        for clients in CLIENTS:
            step_rate = rate(lambda: Agent(url, key), clients, Agent.submit)
            bare_rate = rate(lambda: Agent(url, key), clients, lambda a: a.timed_get(BARE))
            read_rate = rate(
                lambda: Agent(url, key), clients, lambda a: a.timed_get("/api/v1/agent")
            )
            rates.append((clients, step_rate, bare_rate, read_rate))
        loads.append(load())

        one_run = Agent(url, key, run_steps=LONG_RUN)
        long_run = [one_run.submit() for _ in range(LONG_RUN)]
        one_run.close()
    finally:
        server.terminate()
        server.wait(10)

    b50, b99 = pct(bare, 0.5), pct(bare, 0.99)
    a50, a99 = pct(agent_reads, 0.5), pct(agent_reads, 0.99)
    s50, s99 = pct(steps, 0.5), pct(steps, 0.99)
    print(
        f"remote API benchmark: {STEPS} allowed steps (runs of {RUN_STEPS}), "
        f"then {RATE_SECONDS:.0f} s at each of {', '.join(map(str, CLIENTS))} clients"
    )
    print(f"  load average (1/5/15 min) at start, after latency, after rates: {' | '.join(loads)}")
    rows = [
        ("floor: bare Django JSON GET p50", ms(b50), f"p99 {ms(b99)}"),
        ("floor: GET /api/v1/agent p50", ms(a50), f"p99 {ms(a99)}"),
        (
            "submit -> decision (allow) p50",
            ms(s50),
            f"= {s50 / b50:.1f}x bare JSON, {s50 / a50:.1f}x GET agent",
        ),
        (
            "submit -> decision (allow) p99",
            ms(s99),
            f"= {s99 / b99:.1f}x bare JSON p99, {s99 / a99:.1f}x GET agent p99",
        ),
    ]
    for clients, step_rate, bare_rate, read_rate in rates:
        rows += [
            (
                f"{clients} client(s): steps/s (submit + report)",
                f"{step_rate:.0f}",
                f"= {2 * step_rate:.0f} API requests/s: {2 * step_rate / bare_rate:.2f}x bare "
                f"JSON ({bare_rate:.0f}/s), {2 * step_rate / read_rate:.2f}x GET agent "
                f"({read_rate:.0f}/s)",
            )
        ]
    first, last = long_run[:50], long_run[-50:]
    rows.append(
        (
            f"one run of {LONG_RUN}: submit p50 steps 1-50",
            ms(pct(first, 0.5)),
            f"steps {LONG_RUN - 49}-{LONG_RUN}: {ms(pct(last, 0.5))} "
            f"({pct(last, 0.5) / pct(first, 0.5):.1f}x)",
        )
    )
    report(rows)


if __name__ == "__main__":
    main()
