"""The newcomer's path: `make run` against a database that does not exist yet, error pages
in the console's layout, a quiet log (favicon, one line per e-mail), the first people
given their roles from the command line, and words spelled right."""

from __future__ import annotations

import logging
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.conf import settings
from django.core.mail import EmailMessage, get_connection
from django.core.management import CommandError, call_command
from django.test import Client, RequestFactory
from django.views.defaults import server_error

from agents import roles
from agents.runtime import execute_run
from agents.services import run_start
from approvals.models import ApprovalRequest
from approvals.services import approval_decide
from audit.evidence import EXPORT_FORBIDDEN
from audit.models import AuditEvent
from audit.verbs import Verb
from tests.conftest import ROOT, child_env, free_port, wait_for

HOLD_PAYOUTS = {
    "rules": [{"tool": "test.pay", "effect": "approve"}, {"tool": "test.*", "effect": "allow"}]
}


def _admin_connection() -> psycopg.Connection[Any]:
    db = settings.DATABASES["default"]
    return psycopg.connect(
        host=db["HOST"],
        port=db["PORT"] or 5432,
        user=db["USER"],
        password=db.get("PASSWORD") or None,
        dbname="postgres",
        autocommit=True,
    )


@pytest.mark.parametrize("pool", ["false", "true"])
def test_make_run_creates_a_database_that_does_not_exist(tmp_path: Path, pool: str) -> None:
    db = settings.DATABASES["default"]
    name = f"baton_newcomer_{uuid.uuid4().hex[:8]}"
    url = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT'] or 5432}/{name}"
    env = child_env(
        DATABASE_URL=url,
        BATON_DB_POOL=pool,
        BATON_DATA_DIR=str(tmp_path),
        BATON_TASK_QUEUE=f"baton-newcomer-{uuid.uuid4().hex[:8]}",
        PYTHONUNBUFFERED="1",
    )
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "up", "--no-demo", "--port", str(free_port())],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(
            lambda: "Baton is up" in log.read_text() or proc.poll() is not None,
            timeout=120,
            message="the console to start",
        )
        text = log.read_text()
        assert "Baton is up" in text, text[-3000:]
        assert f"Created the database {name}." in text
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        with _admin_connection() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_make_run_says_in_one_line_when_it_cannot_create_the_database(tmp_path: Path) -> None:
    db = settings.DATABASES["default"]
    url = f"postgres://no_such_role@{db['HOST']}:{db['PORT'] or 5432}/baton_nowhere"
    done = subprocess.run(
        [sys.executable, "manage.py", "up", "--no-demo", "--port", str(free_port())],
        cwd=ROOT,
        env=child_env(DATABASE_URL=url, BATON_DATA_DIR=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("CommandError: Could not find or create the database baton_nowhere")
    assert "createdb baton_nowhere" in line


@pytest.mark.django_db
def test_error_pages_use_the_console_layout(world: Any) -> None:
    assert settings.DEBUG is False
    supervisor = Client()
    supervisor.force_login(world.supervisor)
    missing = supervisor.get("/no/such/page/")
    assert missing.status_code == 404
    assert 'class="topbar"' in missing.content.decode() and "Not found" in missing.content.decode()
    assert "Log out" in missing.content.decode(), "the signed-in person's own navigation"

    outsider = Client()
    outsider.force_login(world.outsider)
    refused = outsider.post("/audit/export", {"format": "jsonl"})
    assert refused.status_code == 403
    assert 'class="topbar"' in refused.content.decode()
    assert EXPORT_FORBIDDEN in refused.content.decode()

    broken = server_error(RequestFactory().get("/"))
    assert broken.status_code == 500
    assert 'class="topbar"' in broken.content.decode()
    assert "Something went wrong" in broken.content.decode()


@pytest.mark.django_db
def test_the_favicon_is_served_not_a_404() -> None:
    client = Client()
    icon = client.get("/favicon.ico", follow=True)
    assert icon.status_code == 200 and icon["Content-Type"].startswith("image/svg+xml")
    assert 'rel="icon"' in client.get("/login/").content.decode()


def test_a_local_console_logs_one_line_per_e_mail_not_the_message(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    embedded = {k: v for k, v in child_env().items() if k not in ("DATABASE_URL", "EMAIL_BACKEND")}
    default = subprocess.run(
        [sys.executable, "-c", "from console import settings; print(settings.EMAIL_BACKEND)"],
        cwd=ROOT,
        env={**embedded, "BATON_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert default == "console.mail.OneLineEmailBackend"

    body = 'Arguments:\n{\n  "amount": 4200\n}\n' * 20
    message = EmailMessage(subject="[Baton] Approve test.pay", body=body, to=["sam@x.example"])
    with caplog.at_level(logging.INFO, logger="baton.mail"):
        sent = get_connection("console.mail.OneLineEmailBackend").send_messages([message])
    assert sent == 1
    (record,) = caplog.records
    assert record.levelno == logging.INFO
    assert record.getMessage() == "e-mail to sam@x.example: [Baton] Approve test.pay"


@pytest.mark.django_db
def test_a_rejection_reads_rejected(make_agent: Any, world: Any) -> None:
    payer = make_agent("payer", "tests.support.agents.payout_with_fallback", HOLD_PAYOUTS)
    run = run_start(agent=payer, input={"claim_id": "c1", "amount": 300})
    execute_run(run.pk)
    request = ApprovalRequest.objects.get(run=run)
    approval_decide(
        request_id=request.pk,
        user=world.supervisor,
        verdict="reject",
        seen_args_hash=request.args_hash,
        comment="not covered",
    )
    client = Client()
    client.force_login(world.supervisor)
    page = client.get(f"/approvals/{request.pk}/").content.decode()
    assert "rejected" in page and "rejectd" not in page


@pytest.mark.django_db
def test_the_first_people_get_their_roles_from_the_command_line(world: Any) -> None:
    call_command("role", "carla", roles.COMPLIANCE, "--create", "--email", "carla@x.example")
    carla = world.supervisor.__class__.objects.get(username="carla")
    assert carla.has_perm("audit.view_auditevent") and not carla.has_usable_password()

    grants = AuditEvent.objects.filter(verb=Verb.GRANT_ADDED).count()
    call_command("role", "sam", roles.SUPERVISOR, "--team", "support")
    assert world.supervisor.has_perm("agents.supervise_team", world.support)
    assert AuditEvent.objects.filter(verb=Verb.GRANT_ADDED).count() == grants + 1

    people, events = world.supervisor.__class__.objects.count(), AuditEvent.objects.count()
    for bad in (
        ["nobody", roles.SUPERVISOR, "--team", "claims"],  # no such person
        ["newbie", roles.SUPERVISOR, "--create"],  # a supervisor needs a team or agent
        ["newbie", roles.SUPERVISOR, "--team", "nowhere", "--create"],  # no such team
        ["newbie", roles.COMPLIANCE, "--team", "claims", "--create"],
    ):
        with pytest.raises(CommandError):
            call_command("role", *bad)
    assert world.supervisor.__class__.objects.count() == people
    assert AuditEvent.objects.count() == events


def test_the_readmes_local_try_of_production_serves_plain_http(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    production = readme.split("## Running in production")[1].split("\n## ")[0]
    local = production.split("over plain HTTP first")[1].split("```sh")[1].split("```")[0]
    assigned = dict(
        word.split("=", 1) for word in local.replace("\\\n", " ").split() if "=" in word
    )
    assert assigned["BATON_HTTPS"] == "false" and "SECRET_KEY" not in assigned
    env = {k: v for k, v in child_env().items() if k not in ("SECRET_KEY", "BATON_HTTPS")}
    shown = subprocess.run(
        [
            sys.executable,
            "-c",
            "from console import settings as s; "
            "print(s.HTTPS, getattr(s, 'SECURE_SSL_REDIRECT', False), "
            "getattr(s, 'SESSION_COOKIE_SECURE', False))",
        ],
        cwd=ROOT,
        env={**env, **assigned, "BATON_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert shown == ["False", "False", "False"]
    assert "python manage.py role" in production and "createsuperuser" in production
