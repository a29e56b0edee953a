"""The probes, metrics and JSON logs of a real console process (uvicorn, ASGI), against a
Redis server of the test's own that is killed and started again on the same port."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Server, free_port, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


class RedisServer:
    """A throwaway redis-server on a port of its own, without persistence."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.tmp = tmp
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
            + ["--save", "", "--appendonly", "no", "--dir", str(self.tmp)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        wait_for(lambda: _pings(client), timeout=10, message="redis-server up")
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    server.kill()


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, _lower(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, _lower(error.headers), error.read()


def _lower(headers: Any) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def serve(task_queue: str, tmp_path: Path, **env: str) -> Server:
    server = Server(task_queue, tmp_path)
    server.env.update(env)
    return server.start()


def test_readyz_names_redis_while_it_is_down_and_recovers_when_it_is_back(
    own_redis: RedisServer, task_queue: str, tmp_path: Path
) -> None:
    server = serve(task_queue, tmp_path, REDIS_URL=own_redis.url)
    try:
        status, _, body = get(f"{server.url}/readyz")
        assert status == 200, body
        assert json.loads(body)["checks"]["redis"] == "ok"

        own_redis.kill()
        status, headers, body = get(f"{server.url}/readyz")
        assert status == 503
        assert headers["content-type"] == "application/json"
        answer = json.loads(body)
        assert answer["status"] == "failing"
        # The broker is the same Redis here: both are named, nothing else is.
        assert answer["failed"] == ["redis", "broker"]
        assert answer["checks"]["database"] == "ok"
        assert "127.0.0.1" not in body.decode()  # the kind of failure, not the host
        # Alive all the same: a liveness probe must not restart a process for this.
        assert get(f"{server.url}/healthz")[0] == 200

        own_redis.start()  # the same port again
        assert own_redis.url in server.env["REDIS_URL"]
        wait_for(lambda: get(f"{server.url}/readyz")[0] == 200, timeout=20, message="ready again")
    finally:
        server.stop()


def test_a_real_process_serves_metrics_to_its_token_and_logs_json_with_request_ids(
    task_queue: str, tmp_path: Path
) -> None:
    token = "scrape-token-x9"
    server = serve(
        task_queue,
        tmp_path,
        BATON_LOG_JSON="true",
        BATON_METRICS_TOKEN=token,
        BATON_METRICS_ALLOW="192.0.2.0/24",  # not this machine: only the token opens it
    )
    try:
        assert get(f"{server.url}/metrics")[0] == 404
        status, _, body = get(f"{server.url}/metrics", {"Authorization": f"Bearer {token}"})
        assert status == 200
        names = {f.name for f in text_string_to_metric_families(body.decode())}
        assert {"baton_runs", "baton_live_sockets", "baton_collector_up"} <= names

        status, headers, _ = get(f"{server.url}/login/", {"X-Request-ID": "probe-req-42"})
        assert status == 200 and headers["x-request-id"] == "probe-req-42"

        def logged() -> dict[str, Any] | None:
            for line in server.log.read_text().splitlines():
                if line.startswith("{") and '"probe-req-42"' in line:
                    return dict(json.loads(line))
            return None

        line = wait_for(logged, timeout=10, message="the request's JSON log line")
        assert line["request_id"] == "probe-req-42"
        assert (line["path"], line["status"], line["level"]) == ("/login/", 200, "info")
        assert "timestamp" in line
    finally:
        server.stop()
