"""The README's run command: one process, SQLite, in-process worker and timers, demo
agents working — started for real in a subprocess with no DATABASE_URL or REDIS_URL."""

from __future__ import annotations

import http.cookiejar
import re
import sqlite3
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

from tests.conftest import ROOT, child_env, free_port, wait_for


def test_the_embedded_console_comes_up_with_demo_agents_working(tmp_path: Path) -> None:
    port = free_port()
    env = {
        k: v
        for k, v in child_env().items()
        if k not in ("DATABASE_URL", "REDIS_URL", "BATON_TASK_QUEUE")
    }
    env.update(
        BATON_DATA_DIR=str(tmp_path),
        BATON_HTTPS="false",
        SECRET_KEY="",
        BATON_AGENT_MODULES="agents.demo",
        BATON_DEMO_EVERY_SECONDS="0.5",
        PYTHONUNBUFFERED="1",
    )
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "up", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        banner = wait_for(
            lambda: "Agent admin" in log.read_text() and log.read_text(),
            timeout=60,
            message="the start-up banner",
        )
        assert "embedded (SQLite, in-process worker)" in banner
        sam = re.search(r"^\s+(sam)\s+(\S+)\s+Supervisor$", banner, re.M)
        assert sam, banner
        username, password = sam.groups()

        db = tmp_path / "baton.sqlite3"

        def succeeded_agents() -> set[str]:
            with sqlite3.connect(db) as con:
                rows = con.execute(
                    "SELECT DISTINCT a.slug FROM agents_run r JOIN agents_agent a "
                    "ON a.id = r.agent_id WHERE r.status = 'succeeded'"
                ).fetchall()
            return {slug for (slug,) in rows}

        wait_for(
            lambda: succeeded_agents() >= {"claims-payer", "stock-reorderer", "customer-mailer"},
            timeout=60,
            message="every demo agent to finish a run",
        )

        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        base = f"http://127.0.0.1:{port}"
        opener.open(f"{base}/login/")
        token = next(c.value for c in jar if c.name == "csrftoken")
        form = urllib.parse.urlencode(
            {"username": username, "password": password, "csrfmiddlewaretoken": token}
        ).encode()
        request = urllib.request.Request(  # noqa: S310  (http on loopback)
            f"{base}/login/", data=form, headers={"Referer": f"{base}/login/"}
        )
        page = opener.open(request).read().decode()
        assert "Claim payout" in page and "Inventory reorder" in page
        assert "Customer e-mail" in page
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
