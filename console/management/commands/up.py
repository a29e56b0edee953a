"""`manage.py up`: the whole console in one process — web, worker, timers and demo.

Embedded default (no DATABASE_URL/REDIS_URL): SQLite, in-memory broker and channel layer;
with them, Postgres and Redis. The same code runs either way; only the backends differ.
For production, run web, worker and beat as separate processes (see the README).
"""

from __future__ import annotations

import socket
import threading
import warnings
from typing import Any

import uvicorn
from celery.beat import EmbeddedService
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.utils import DatabaseError

from agents.demo.seed import demo_seed
from console.celery import app as celery_app

NO_DATABASE = (
    "Could not find or create the database {name} ({why}); "
    "create it with `createdb {name}` and run again."
)


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


# Timers whose first round runs as soon as the console is up, not an interval later (the
# KPI rollup catches up on the hours that closed while the console was down).
FIRST_AT_START = ("audit.checkpoint", "audit.verify", "kpis.rollup")


class Command(BaseCommand):
    help = "Run the whole Baton console (web, worker, timers) in one process, with demo agents."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--concurrency", type=int, default=4)
        parser.add_argument("--no-demo", action="store_true", help="no demo agents or workload")

    def handle(
        self, *args: Any, host: str, port: int, concurrency: int, no_demo: bool, **options: Any
    ) -> None:
        self._database_ensure()
        call_command("migrate", interactive=False, verbosity=0)
        # The demo needs its agents' code loaded (BATON_AGENT_MODULES); every other timer
        # is in the schedule already (settings.CELERY_BEAT_SCHEDULE).
        demo = not no_demo and "agents.demo" in settings.BATON_AGENT_MODULES
        credentials = demo_seed() if demo else []
        if demo:
            celery_app.conf.beat_schedule["demo workload"] = settings.BATON_DEMO_WORKLOAD_TIMER
        self._banner(host, port, credentials)

        server = uvicorn.Server(
            uvicorn.Config(
                "console.asgi:application",
                host=host,
                port=port,
                lifespan="off",
                log_level="warning",
                # A live frame is sent to many sockets: compressing it for each one
                # (permessage-deflate) cost more than the send itself (bench/README.md).
                ws="websockets-sansio",
                ws_per_message_deflate=False,
            )
        )
        threading.Thread(target=server.run, name="web", daemon=True).start()
        # Beat as a thread of this process: with the in-memory broker a separate beat
        # process could not reach this worker.
        EmbeddedService(celery_app, thread=True).start()  # type: ignore[union-attr]
        # Beat fires each timer only when its interval has passed; a newcomer should not
        # wait a quarter of an hour for the trail's first checkpoint and verification.
        for task in FIRST_AT_START:
            celery_app.send_task(task)
        worker = celery_app.Worker(
            pool="threads",
            concurrency=concurrency,
            loglevel="WARNING",
            hostname=f"baton-up@{socket.gethostname()}",
            queues=[settings.CELERY_TASK_DEFAULT_QUEUE],
        )
        worker.start()  # blocks until Ctrl-C; the web thread ends with the process

    def _database_ensure(self) -> None:
        """A Postgres DATABASE_URL naming a database that does not exist yet: create it
        (a newcomer's first `make run`), or say in one line how to."""
        connection = connections[DEFAULT_DB_ALIAS]
        if connection.vendor != "postgresql":
            return  # SQLite creates its file on first use
        name = connection.settings_dict["NAME"]
        try:
            # Through the server's maintenance database: a pool (BATON_DB_POOL) would only
            # time out on a database that is not there. Django warns when it falls back
            # from that database; the error below already says what is wrong.
            with (
                warnings.catch_warnings(action="ignore", category=RuntimeWarning),
                connection._nodb_cursor() as cursor,
            ):
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
                if cursor.fetchone():
                    return
                cursor.execute(f"CREATE DATABASE {connection.ops.quote_name(name)}")
        except DatabaseError as exc:
            raise CommandError(NO_DATABASE.format(name=name, why=_one_line(exc))) from exc
        self.stdout.write(f"Created the database {name}.")

    def _banner(self, host: str, port: int, credentials: list[tuple[str, str, str]]) -> None:
        mode = "embedded (SQLite, in-process worker)" if settings.EMBEDDED else "Postgres + Redis"
        self.stdout.write(self.style.SUCCESS(f"Baton is up on http://{host}:{port}/  [{mode}]"))
        if credentials:
            self.stdout.write("Demo accounts (passwords are new on every start):")
            for username, password, role in credentials:
                self.stdout.write(f"  {username:<6} {password:<16} {role}")
        self.stdout.flush()
