"""Shared set-up for the benchmarks: a database of their own, migrated, and statistics."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

ROOT = Path(__file__).resolve().parent.parent


def use_bench_database(name: str = "baton_bench") -> str:
    """Point DATABASE_URL at a fresh database beside the configured one, before Django
    starts, so a benchmark never touches the suite's or anyone's data."""
    import psycopg

    url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
    parts = urlparse(url)
    admin = psycopg.connect(urlunparse(parts), autocommit=True)
    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.execute(f'CREATE DATABASE "{name}"')
    admin.close()
    bench_url = urlunparse(parts._replace(path=f"/{name}"))
    os.environ["DATABASE_URL"] = bench_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    sequencer_start(bench_url)
    return bench_url


def page_floors(login: list[float], samples: int) -> tuple[float, list[tuple[str, str, str]]]:
    """The page benchmarks' floors from the same run: a bare `SELECT 1` round trip
    (samples × 5) and the login page's times given; its p95 (what a page's p95 is
    measured against) and their report rows."""
    from django.db import connection

    with connection.cursor() as cursor:
        trips = []
        for _ in range(samples * 5):
            t = time.perf_counter()
            cursor.execute("SELECT 1")
            cursor.fetchone()
            trips.append(time.perf_counter() - t)
    floor = pct(login, 0.95)
    return floor, [
        (
            "floor: SELECT 1 p50 / p95",
            f"{pct(trips, 0.5) * 1000:.3f} ms",
            f"/ {pct(trips, 0.95) * 1000:.3f} ms",
        ),
        (
            "floor: login page p50 / p95",
            f"{pct(login, 0.5) * 1000:.2f} ms",
            f"/ {floor * 1000:.2f} ms",
        ),
    ]


def use_kept_database(name: str) -> str:
    """Django on the database an earlier run of a benchmark kept (its BENCH_*_REUSE=1), as
    that run left it — nothing dropped or started — but migrated to this code's schema (a
    kept history outlives a migration)."""
    url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
    bench_url = urlunparse(urlparse(url)._replace(path=f"/{name}"))
    os.environ["DATABASE_URL"] = bench_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return bench_url


def audit_keys_in(work: Path, fresh: bool) -> None:
    """The trail's signing key and checkpoints in the benchmark's own folder (emptied first
    for a fresh database), never the developer's."""
    if fresh:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.pop("BATON_AUDIT_SIGNING_KEY", None)
    os.environ.pop("BATON_AUDIT_TRUSTED_KEYS_FILE", None)
    os.environ["BATON_AUDIT_SIGNING_KEY_FILE"] = str(work / "key.pem")
    os.environ["BATON_AUDIT_CHECKPOINT_DIR"] = str(work / "checkpoints")


def sequencer_start(db_url: str) -> None:
    """A deployment chains audit events with a sequencer (audit.sequencer): each benchmark
    runs one candidate in a process of its own (workers it starts run candidates too; one
    holds), so what it measures includes chaining, as in production."""
    import atexit

    from audit.sequencer import inline

    if inline():
        return
    env = {**os.environ, "DATABASE_URL": db_url}
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "audit_sequencer"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(log_path("bench-sequencer.log"), "wb"),  # noqa: SIM115
    )
    atexit.register(proc.terminate)


def chained_all(timeout: float = 60) -> float:
    """Wait until every queued event is chained; how long that took."""
    from audit.models import PendingEvent

    started = time.perf_counter()
    while PendingEvent.objects.exists():
        if time.perf_counter() - started > timeout:
            raise RuntimeError("the sequencer did not chain the queued events")
        time.sleep(0.005)
    return time.perf_counter() - started


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure_page(
    client: Any,
    url: str,
    samples: int,
    *,
    page_seconds: float | None = None,
    min_samples: int = 5,
    sql_chars: int = 200,
) -> tuple[list[float], int, float, str, float]:
    """Server times of `url` through Django's test Client (in-process: middleware,
    session, view, queries, template; no network) after three requests to warm up — or
    fewer than `samples`, at least `min_samples`, once `page_seconds` have gone by — its
    queries, the SQL share of its time, its slowest query and the median CPU time of this
    process a request (its Python work, without waiting for Postgres or for a core: on a
    shared machine the figure that moves least with the load). bench/pages.py and
    bench/kpis.py measure with it."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    for _ in range(3):
        assert client.get(url).status_code == 200, url
    times: list[float] = []
    cpu: list[float] = []
    stop = None if page_seconds is None else time.perf_counter() + page_seconds
    for _ in range(samples):
        if stop is not None and len(times) >= min_samples and time.perf_counter() > stop:
            break
        began, began_cpu = time.perf_counter(), time.process_time()
        response = client.get(url)
        times.append(time.perf_counter() - began)
        cpu.append(time.process_time() - began_cpu)
        assert response.status_code == 200, url
    with CaptureQueriesContext(connection) as queries:
        began = time.perf_counter()
        client.get(url)
        total = time.perf_counter() - began
    sql = sum(float(q["time"]) for q in queries.captured_queries)
    slowest = max(queries.captured_queries, key=lambda q: float(q["time"]), default=None)
    what = (
        f"{float(slowest['time']) * 1000:.1f} ms: {slowest['sql'][:sql_chars]}" if slowest else ""
    )
    return times, len(queries), sql / total if total else 0.0, what, pct(cpu, 0.5)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms"


def report(rows: list[tuple[str, str, str]]) -> None:
    width = max(len(r[0]) for r in rows)
    for name, figure, note in rows:
        print(f"  {name:<{width}}  {figure:>14}  {note}")
    sys.stdout.flush()


def service_env(db_url: str, **extra: str) -> tuple[dict[str, str], str]:
    """The environment for the worker and web processes a benchmark starts, on a Celery
    queue of the benchmark's own; returns it and the queue."""
    queue = f"bench-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "DATABASE_URL": db_url, "BATON_TASK_QUEUE": queue, **extra}
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    return env, queue


def log_path(name: str) -> Path:
    return Path(os.environ.get("BENCH_LOGS") or tempfile.gettempdir()) / name


def start(cmd: list[str], env: dict[str, str], log: Path, ready: str) -> subprocess.Popen[bytes]:
    out = open(log, "wb")  # noqa: SIM115  (the process writes to it for its whole life)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if ready in log.read_text(errors="replace"):
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"{cmd[2]} did not start:\n{log.read_text()[-2000:]}")


def console_login(base: str, username: str, password: str) -> tuple[Any, Callable[[], str]]:
    """A person logged in to the console at `base` through its login form: an opener that
    keeps the session's cookies, and the CSRF token to send with a POST."""
    import http.cookiejar
    import urllib.parse
    import urllib.request

    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    opener.open(f"{base}/login/")

    def token() -> str:
        value = next(c.value for c in jar if c.name == "csrftoken")
        assert value is not None
        return value

    form = {"username": username, "password": password, "csrfmiddlewaretoken": token()}
    opener.open(
        urllib.request.Request(f"{base}/login/", data=urllib.parse.urlencode(form).encode())
    )
    return opener, token


def start_worker(env: dict[str, str], queue: str, concurrency: int, log: str) -> Any:
    return start(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "console",
            "worker",
            "-P",
            "threads",
            "-c",
            str(concurrency),
            "-Q",
            queue,
            "-l",
            "INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        env,
        log_path(log),
        " ready.",
    )


def start_web(env: dict[str, str], port: int, log: str) -> Any:
    return start(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "console.asgi:application",
            "--port",
            str(port),
            "--lifespan",
            "off",
            # As production runs it (README, `manage.py up`): the sans-I/O WebSocket
            # protocol, no per-message deflate (see bench/README.md, live view).
            "--ws",
            "websockets-sansio",
            "--ws-per-message-deflate",
            "false",
        ],
        env,
        log_path(log),
        "Uvicorn running",
    )


__all__ = ["pct", "measure_page", "ms", "report", "statistics", "use_bench_database"]
