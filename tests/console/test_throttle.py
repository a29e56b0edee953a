"""Password guessing is throttled (django-axes): at the login page and at the password
re-confirmation of the global kill switch, counted together per person; the lock-out is
audited once and the locked-out person gets a page that says what happened."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from typing import Any

import pytest
from axes.models import AccessAttempt
from django.conf import settings
from django.db.models import F
from django.test import Client

from agents.models import KillSwitch
from audit.models import AuditEvent
from audit.verbs import Verb
from console.signin import locked_out_message
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


def log_in(client: Client, username: str, password: str) -> Any:
    return client.post("/login/", {"username": username, "password": password})


def lockouts() -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(verb=Verb.LOGIN_LOCKED_OUT))


def engage_global(client: Client, password: str) -> Any:
    return client.post(
        "/switches/engage",
        {"scope": "global", "mode": "halt", "reason": "incident", "password": password},
    )


def test_the_limit_and_cool_off_are_settings() -> None:
    assert settings.AXES_FAILURE_LIMIT == 5
    assert settings.AXES_COOLOFF_TIME.total_seconds() == 15 * 60
    assert settings.AXES_LOCKOUT_PARAMETERS == ["username"]


def test_repeated_failed_logins_lock_the_account_even_for_the_right_password(world: Any) -> None:
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        page = log_in(client, "sam", "guess")
        assert page.status_code == 200 and "didn't match" in page.content.decode()
    assert lockouts() == []

    locked = log_in(client, "sam", "guess")
    assert locked.status_code == 429
    assert locked_out_message() in locked.content.decode()
    assert "15 minutes" in locked_out_message()
    assert 'class="topbar"' in locked.content.decode(), "the console's own layout"

    right = log_in(Client(), "sam", PASSWORD)
    assert right.status_code == 429 and locked_out_message() in right.content.decode()
    assert "_auth_user_id" not in Client().session

    # One event per lock-out, however many attempts hit the lock.
    log_in(client, "sam", "guess")
    (event,) = lockouts()
    assert event.subject_type == "person" and event.subject_id == str(world.supervisor.pk)
    assert event.actor_type == "system"
    assert event.payload["username"] == "sam" and event.payload["path"] == "/login/"
    assert event.payload["failures"] == settings.AXES_FAILURE_LIMIT


def test_after_the_cool_off_the_right_password_works_again(world: Any) -> None:
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT):
        log_in(client, "sam", "guess")
    assert log_in(client, "sam", PASSWORD).status_code == 429
    # The cool-off has passed for the recorded attempts.
    AccessAttempt.objects.update(attempt_time=F("attempt_time") - settings.AXES_COOLOFF_TIME)
    page = log_in(client, "sam", PASSWORD)
    assert page.status_code == 302 and page.url == "/"


def test_a_successful_login_clears_the_count(world: Any) -> None:
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        log_in(client, "sam", "guess")
    assert log_in(client, "sam", PASSWORD).status_code == 302
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert log_in(Client(), "sam", "guess").status_code == 200
    assert lockouts() == []


def test_an_unknown_username_is_locked_and_audited_without_a_person(world: Any) -> None:
    for _ in range(settings.AXES_FAILURE_LIMIT):
        page = log_in(Client(), "nobody\x7f", "guess")
    assert page.status_code == 429
    (event,) = lockouts()
    assert event.subject_id == "" and event.payload["known"] is False
    assert event.payload["username"] == "nobody"


def test_password_reconfirmation_for_the_global_switch_is_throttled(world: Any) -> None:
    client = Client()
    client.force_login(world.supervisor)
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        page = engage_global(client, "guess")
        assert page.status_code == 302
    locked = engage_global(client, "guess")
    assert locked.status_code == 429 and locked_out_message() in locked.content.decode()

    # Locked: the right password engages nothing, and logging in elsewhere is locked too.
    assert engage_global(client, PASSWORD).status_code == 429
    assert not KillSwitch.objects.exists()
    assert log_in(Client(), "sam", PASSWORD).status_code == 429
    (event,) = lockouts()
    assert event.payload["path"] == "/switches/engage"
    assert event.subject_id == str(world.supervisor.pk)


@pytest.mark.django_db(transaction=True)
def test_the_served_console_locks_out_over_asgi(world: Any, console_server: Any) -> None:
    """The production server (uvicorn, ASGI) runs django-axes' async middleware path."""
    jar = CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    opener.open(f"{console_server.url}/login/")

    def attempt(password: str) -> tuple[int, str]:
        token = next(c.value for c in jar if c.name == "csrftoken")
        form = {"username": "sam", "password": password, "csrfmiddlewaretoken": token}
        request = urllib.request.Request(  # noqa: S310  (http on loopback)
            f"{console_server.url}/login/",
            data=urllib.parse.urlencode(form).encode(),
            headers={"Referer": f"{console_server.url}/login/"},
        )
        try:
            with opener.open(request) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as refused:
            return refused.code, refused.read().decode()

    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert attempt("guess")[0] == 200
    status, page = attempt("guess")
    assert status == 429 and locked_out_message() in page
    assert attempt(PASSWORD)[0] == 429
    assert len(lockouts()) == 1
