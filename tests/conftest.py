"""The suite runs against the real thing: Postgres, Redis, Celery worker processes and
Chromium. If a service is missing the run stops with how to start it — never a skip."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hypothesis
import pytest
import redis
from django.conf import settings

if TYPE_CHECKING:
    from django.contrib.auth.models import User

    from agents.models import Team

ROOT = Path(__file__).resolve().parent.parent

# The `doorbells` fixture: the live doorbells a service rings on commit.
pytest_plugins = ["tests.support.doorbells"]

# Hypothesis must not judge this machine's speed: no per-example deadline, no health check
# that fails a test because generating its inputs was slow on a loaded CI machine.
hypothesis.settings.register_profile(
    "baton",
    deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)
hypothesis.settings.load_profile("baton")
START_POSTGRES = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
START_REDIS = 'redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no'


# Set by tests/agents/test_store_contract.py for the child run of its module against the
# embedded default's SQLite; every other run of the suite is on Postgres.
ON_SQLITE = os.environ.get("BATON_TEST_CONTRACT_ON") == "sqlite"


def pytest_sessionstart(session: pytest.Session) -> None:
    problems = []
    if ON_SQLITE:
        if settings.DATABASES["default"]["ENGINE"] != "django.db.backends.sqlite3":
            problems.append("The contract's SQLite run needs the embedded default's SQLite.")
    elif settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
        problems.append("DATABASE_URL must point at Postgres (run the suite with `make test`).")
    else:
        import psycopg

        db = settings.DATABASES["default"]
        try:
            psycopg.connect(
                host=db["HOST"],
                port=db["PORT"] or 5432,
                user=db["USER"],
                password=db.get("PASSWORD") or None,
                dbname=db["NAME"],
                connect_timeout=3,
            ).close()
        except psycopg.OperationalError as exc:
            problems.append(f"Postgres does not answer ({exc}). Start it: {START_POSTGRES}")
    if not settings.REDIS_URL:
        problems.append("REDIS_URL must be set (run the suite with `make test`).")
    else:
        try:
            redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=3).ping()
        except redis.RedisError as exc:
            problems.append(f"Redis does not answer ({exc}). Start it: {START_REDIS}")
    if "tests.support.agents" not in settings.BATON_AGENT_MODULES:
        problems.append("BATON_AGENT_MODULES must include tests.support.agents (`make test`).")
    if problems:
        pytest.exit("The suite needs its real services:\n  " + "\n  ".join(problems), returncode=3)


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix: None) -> None:
    # Transactional tests are flushed with TRUNCATE, which the audit trail's triggers refuse
    # unless the session says it is this suite's flush (audit migration 0005). Only the
    # test process's own connections say so; workers and servers it starts do not.
    if ON_SQLITE:
        return
    options = settings.DATABASES["default"].setdefault("OPTIONS", {})
    options["options"] = (options.get("options", "") + " -c baton.test_flush=on").strip()


@pytest.fixture(autouse=True)
def audit_keys(settings: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Each test signs checkpoints with a key of its own and keeps them in a directory of
    its own, so no checkpoint of another test's chain is ever held against this one."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from audit.signing import private_pem, signing_key

    where = tmp_path_factory.mktemp("audit")
    # Written up front, so this process and the ones it starts share one key.
    (where / "signing_key.pem").write_bytes(private_pem(Ed25519PrivateKey.generate()))
    settings.BATON_AUDIT_SIGNING_KEY = ""
    settings.BATON_AUDIT_SIGNING_KEY_FILE = str(where / "signing_key.pem")
    settings.BATON_AUDIT_TRUSTED_KEYS_FILE = ""
    settings.BATON_AUDIT_CHECKPOINT_DIR = str(where / "checkpoints")
    signing_key.cache_clear()
    yield where
    signing_key.cache_clear()


@pytest.fixture(scope="session")
def redis_client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


@pytest.fixture(autouse=True)
def _fresh_redis(redis_client: redis.Redis) -> None:
    # Each test gets an empty test Redis database: counters, rate limits, gates.
    redis_client.flushdb()


@pytest.fixture(scope="session")
def task_queue() -> str:
    # A queue of this session's own, so no message from an earlier run is ever delivered.
    from console.celery import app

    name = f"baton-test-{uuid.uuid4().hex[:8]}"
    app.conf.task_default_queue = name
    return name


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a worker or server process: this one's, minus what only the
    test process itself may have."""
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_ALLOW_ASYNC_UNSAFE"}
    # The suite's defaults are in this environment already (tests/settings.py); a child
    # loads the settings production loads, so one that drops a variable goes without it.
    env["DJANGO_SETTINGS_MODULE"] = "console.settings"
    # The audit key and checkpoint file of the test at hand (see audit_keys).
    env["BATON_AUDIT_SIGNING_KEY_FILE"] = settings.BATON_AUDIT_SIGNING_KEY_FILE
    env["BATON_AUDIT_CHECKPOINT_DIR"] = settings.BATON_AUDIT_CHECKPOINT_DIR
    return {**env, **extra}


def db_url() -> str:
    db = settings.DATABASES["default"]
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}"


class Worker:
    """A real `celery worker` process against the test database and this session's queue."""

    def __init__(
        self, queue: str, tmp: Path, env: dict[str, str], concurrency: int = 4, beat: bool = False
    ) -> None:
        self.queue, self.concurrency, self.beat = queue, concurrency, beat
        self.log = tmp / f"worker-{uuid.uuid4().hex[:6]}.log"
        defaults = {
            "DATABASE_URL": db_url(),
            "BATON_TASK_QUEUE": queue,
            "BATON_RUN_LEASE_SECONDS": "2",
            "PYTHONUNBUFFERED": "1",
        }
        self.env = child_env(**{**defaults, **env})
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
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
                    str(self.concurrency),
                    "-Q",
                    self.queue,
                    "-l",
                    "INFO",
                    "-n",
                    f"test-{uuid.uuid4().hex[:6]}@%h",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                    *(["-B"] if self.beat else []),
                ],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if b" ready." in self.log.read_bytes():
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"the Celery worker did not start:\n{self.log.read_text()[-3000:]}")

    def finished(self, task: str) -> int:
        """How many `task` deliveries this worker has finished (succeeded or failed): the
        observable event a negative check waits for instead of sleeping."""
        text = self.log.read_text(errors="replace")
        return len(re.findall(rf"Task {re.escape(task)}\[[^\]]+\] (?:succeeded|raised)", text))

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, no ack, no goodbye."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def start_worker(task_queue: str, tmp_path: Path) -> Iterator[Any]:
    started: list[Worker] = []

    def start(beat: bool = False, **env: str) -> Worker:
        worker = Worker(task_queue, tmp_path, env, beat=beat).start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def worker(start_worker: Any) -> Worker:
    return start_worker()


@pytest.fixture
def audit_queued(settings: Any) -> Iterator[None]:
    """This process writes as a deployment does: audit events queued, chained by the
    sequencer (audit.sequencer), not inline as the rest of the suite."""
    from django.db import connection

    settings.BATON_AUDIT_SEQUENCING = "sequencer"
    with connection.cursor() as cursor:
        cursor.execute("SET baton.audit_inline = off")
    yield
    with connection.cursor() as cursor:
        cursor.execute("RESET baton.audit_inline")


class AuditSequencer:
    """`manage.py audit_sequencer`: a candidate in a process of its own, as in production."""

    def __init__(self, tmp: Path, poll: str = "0.2") -> None:
        self.log = tmp / f"sequencer-{time.monotonic_ns()}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "manage.py", "audit_sequencer", "--poll", poll],
                cwd=ROOT,
                env=child_env(DATABASE_URL=db_url(), BATON_AUDIT_SEQUENCING="sequencer"),
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def audit_sequencer(tmp_path: Path) -> Iterator[Any]:
    """Starts sequencer candidates; each is killed at the end of the test."""
    started: list[AuditSequencer] = []

    def start() -> AuditSequencer:
        started.append(AuditSequencer(tmp_path))
        return started[-1]

    yield start
    for candidate in started:
        candidate.stop()


def chained(seq: int | None) -> int:
    """The sequence number of an event written in this suite, whose writers chain their
    events inline (tests/settings.py); a deployment's writers queue them (None)."""
    assert seq is not None, "the suite chains audit events inline"
    return seq


def wait_for(predicate: Any, timeout: float = 20, message: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


# --- people and their world -------------------------------------------------------------

PASSWORD = "correct horse battery"
_HASH: list[str] = []


def _password_hash() -> str:
    # Hashing is deliberately slow; every named person shares one hash of PASSWORD.
    if not _HASH:
        from django.contrib.auth.hashers import make_password

        _HASH.append(make_password(PASSWORD))
    return _HASH[0]


@pytest.fixture
def world(db: Any) -> Any:
    """Two teams, named people with roles and grants, and no agents yet."""
    from django.contrib.auth import get_user_model

    from agents import roles
    from agents.services import team_create

    roles.roles_ensure()
    user_model = get_user_model()

    class World:
        claims: Team
        support: Team
        supervisor: User
        second_supervisor: User
        support_supervisor: User
        compliance: User
        admin: User
        outsider: User

    w = World()
    w.claims = team_create(slug="claims", name="Claims")
    w.support = team_create(slug="support", name="Support")

    def person(username: str, role: str | None) -> Any:
        user = user_model.objects.create_user(username)
        user.password = _password_hash()
        user.save(update_fields=["password"])
        if role:
            from django.contrib.auth.models import Group

            user.groups.add(Group.objects.get(name=role))
        return user

    w.supervisor = person("sam", roles.SUPERVISOR)
    roles.role_grant(user=w.supervisor, role=roles.SUPERVISOR, target=w.claims)
    w.second_supervisor = person("sol", roles.SUPERVISOR)
    roles.role_grant(user=w.second_supervisor, role=roles.SUPERVISOR, target=w.claims)
    w.support_supervisor = person("sue", roles.SUPERVISOR)
    roles.role_grant(user=w.support_supervisor, role=roles.SUPERVISOR, target=w.support)
    w.compliance = person("cora", roles.COMPLIANCE)
    w.admin = person("ada", roles.AGENT_ADMIN)
    roles.role_grant(user=w.admin, role=roles.AGENT_ADMIN, target=w.claims)
    w.outsider = person("otto", None)
    return w


@pytest.fixture
def make_agent(world: Any) -> Any:
    from agents.services import agent_create, version_create, version_publish

    def make(
        slug: str,
        program: str,
        policy: dict[str, Any],
        team: Any = None,
        config: dict[str, Any] | None = None,
    ) -> Any:
        agent = agent_create(
            slug=slug,
            name=slug.replace("-", " ").title(),
            team=team or world.claims,
            user=world.admin,
        )
        version = version_create(
            agent=agent,
            program=program,
            policy=policy,
            config=config or {"model": "scripted"},
            user=world.admin,
        )
        version_publish(version=version, user=None, reason="test set-up")
        agent.refresh_from_db()
        return agent

    return make


ALLOW_ALL_TESTS = {"rules": [{"tool": "test.*", "effect": "allow"}]}


# --- a real console server and a real browser ------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """The ASGI console under uvicorn, as production runs it, on the test database."""

    def __init__(self, queue: str, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "server.log"
        self.env = child_env(DATABASE_URL=db_url(), BATON_TASK_QUEUE=queue)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        import urllib.request

        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "console.asgi:application",
                    "--port",
                    str(self.port),
                    "--lifespan",
                    "off",
                    "--ws",
                    "websockets-sansio",
                    "--ws-per-message-deflate",
                    "false",
                ],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        # Generous: a loaded CI machine may take seconds over the first request.
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.url}/login/", timeout=10) as response:  # noqa: S310
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"the console did not start:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def restart(self) -> Server:
        self.stop()
        return self.start()


@pytest.fixture
def console_server(task_queue: str, tmp_path: Path) -> Iterator[Server]:
    server = Server(task_queue, tmp_path).start()
    yield server
    server.stop()


CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]


def log_in(page: Any, server: Server, username: str) -> None:
    page.goto(f"{server.url}/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{server.url}/")
