"""Production settings pass Django's deployment checks; secrets come only from outside."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, child_env


def manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in child_env().items()
        if k not in ("SECRET_KEY", "BATON_HTTPS", "BATON_AUDIT_SIGNING_KEY_FILE")
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


PRODUCTION = {
    "SECRET_KEY": "a-long-random-production-secret-" + "x" * 40,
    "ALLOWED_HOSTS": "baton.example.com",
}


def test_check_deploy_is_clean_for_production_settings(tmp_path: Path) -> None:
    key = tmp_path / "audit.pem"
    assert manage("audit_keygen", str(key), **PRODUCTION).returncode == 0
    assert key.stat().st_mode & 0o777 == 0o600
    done = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        BATON_AUDIT_SIGNING_KEY_FILE=str(key),
        **PRODUCTION,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no issues" in done.stdout


def test_check_deploy_warns_when_production_would_sign_no_checkpoints() -> None:
    done = manage("check", "--deploy", "--fail-level", "WARNING", **PRODUCTION)
    assert done.returncode != 0
    assert "audit.W001" in done.stderr + done.stdout


def test_a_signing_key_is_never_overwritten(tmp_path: Path) -> None:
    key = tmp_path / "audit.pem"
    assert manage("audit_keygen", str(key), **PRODUCTION).returncode == 0
    first = key.read_bytes()
    done = manage("audit_keygen", str(key), **PRODUCTION)
    assert done.returncode != 0 and "never overwritten" in done.stderr
    assert key.read_bytes() == first


def test_production_refuses_to_start_without_a_secret_key() -> None:
    done = manage("check")
    assert done.returncode != 0
    assert "SECRET_KEY must be set in the environment" in done.stderr
