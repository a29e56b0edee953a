"""Production settings pass Django's deployment checks; secrets come only from outside."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT, child_env


def manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in child_env().items() if k not in ("SECRET_KEY", "BATON_HTTPS")}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_deploy_is_clean_for_production_settings() -> None:
    done = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        SECRET_KEY="a-long-random-production-secret-" + "x" * 40,
        ALLOWED_HOSTS="baton.example.com",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no issues" in done.stdout


def test_production_refuses_to_start_without_a_secret_key() -> None:
    done = manage("check")
    assert done.returncode != 0
    assert "SECRET_KEY must be set in the environment" in done.stderr
