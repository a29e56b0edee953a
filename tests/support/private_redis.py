"""A redis-server of a test's own, on a free port: a test may stop, restart or withhold it
without disturbing the shared Redis that other tests and sessions use."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis


class PrivateRedis:
    def __init__(self, port: int, where: Path) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.log = where / f"redis-{port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PrivateRedis:
        server = shutil.which("redis-server") or "/usr/bin/redis-server"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [server, "--bind", "127.0.0.1", "--port", str(self.port), "--save", ""]
                + ["--appendonly", "no", "--daemonize", "no"],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    return self
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start:\n{self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        """Gone at once, like a crash: what it held in memory is lost."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self) -> PrivateRedis:
        self.stop()
        return self.start()
