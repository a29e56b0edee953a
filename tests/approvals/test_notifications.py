"""Approval notifications: e-mail to the people who may decide, signed webhooks to a real
HTTP receiver, delivered with back-off by Celery, in process and in a real worker."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from celery.signals import task_retry
from django.core import mail
from django.db import transaction
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from agents.runtime import execute_run
from agents.services import run_start
from approvals.models import ApprovalRequest
from approvals.notifications import (
    EVENTS,
    message_id,
    notify_on_commit,
    recipients,
    sign,
    verify,
    webhook_body,
)
from approvals.tasks import webhook_deliver
from tests.conftest import free_port, wait_for

SECRET = "s3cret"
HOLD_PAY = {"rules": [{"tool": "test.pay", "effect": "approve"}]}
LOCMEM = "django.core.mail.backends.locmem.EmailBackend"


# --- a real HTTP receiver ---------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: str
    at: float


@dataclass
class Receiver:
    """Answers each POST with the next scripted status; the last one repeats."""

    statuses: list[int]
    url: str = ""
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, received: Received) -> int:
        with self.lock:
            self.requests.append(received)
            index = min(len(self.requests), len(self.statuses)) - 1
            return self.statuses[index]


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
            received = Received(self.path, dict(self.headers.items()), body, time.monotonic())
            self.send_response(receiver.answer(received))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the test reads `requests`, not stderr

    return Handler


@pytest.fixture
def make_receiver() -> Iterator[Any]:
    servers: list[ThreadingHTTPServer] = []

    def make(*statuses: int) -> Receiver:
        receiver = Receiver(list(statuses) or [200])
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(receiver))
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/baton"
        return receiver

    yield make
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def countdowns() -> Iterator[list[float]]:
    """The countdown of every retry Celery schedules for webhook_deliver, in order."""
    seen: list[float] = []

    def record(sender: Any = None, reason: Any = None, **_: Any) -> None:
        if sender is not None and sender.name == "approvals.webhook_deliver":
            seen.append(reason.when)

    task_retry.connect(record, weak=False)
    yield seen
    task_retry.disconnect(record)


def deliver(url: str, body: str) -> Any:
    """Run the task in this process; Celery re-applies it eagerly on each retry."""
    return webhook_deliver.apply(args=(url, body, message_id(body)))


def signed_by_us(received: Received, secret: str = SECRET) -> bool:
    """Signed with `secret` both ways: Standard Webhooks, checked by that project's own
    library as a receiver would, and the old header kept for one release."""
    key = secret.encode() if not secret.startswith("whsec_") else secret
    try:
        Webhook(key).verify(received.body, received.headers)
    except WebhookVerificationError:
        return False
    return verify(
        secret=secret,
        header=received.headers.get("X-Baton-Signature", ""),
        body=received.body,
        now=int(time.time()),
    )


def header(received: Received, name: str) -> str:
    return {k.lower(): v for k, v in received.headers.items()}[name]


def queued_tasks(redis_client: Any, queue: str) -> list[tuple[str, list[Any]]]:
    """(task name, args) of each message waiting in the test's Celery queue in Redis."""
    out = []
    for raw in redis_client.lrange(queue, 0, -1):
        message = json.loads(raw)
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        out.append((message["headers"]["task"], args))
    return out


# --- signing ----------------------------------------------------------------------------

BODY = '{"event":"approval.requested","request_id":7}'
NOW = 1_700_000_000


def test_a_signature_verifies_with_the_same_secret_body_and_time() -> None:
    header = sign(secret=SECRET, body=BODY, timestamp=NOW)
    assert header.startswith(f"t={NOW},v1=")
    assert len(header.split("v1=")[1]) == 64, "hex SHA-256"
    assert verify(secret=SECRET, header=header, body=BODY, now=NOW)


def test_a_flipped_byte_in_the_body_fails_verification() -> None:
    header = sign(secret=SECRET, body=BODY, timestamp=NOW)
    tampered = BODY.replace("7", "8")
    assert tampered != BODY
    assert not verify(secret=SECRET, header=header, body=tampered, now=NOW)


def test_a_flipped_digit_in_the_mac_fails_verification() -> None:
    header = sign(secret=SECRET, body=BODY, timestamp=NOW)
    last = header[-1]
    tampered = header[:-1] + ("0" if last != "0" else "1")
    assert not verify(secret=SECRET, header=tampered, body=BODY, now=NOW)


def test_a_signature_made_with_another_secret_fails() -> None:
    header = sign(secret="not-the-secret", body=BODY, timestamp=NOW)
    assert not verify(secret=SECRET, header=header, body=BODY, now=NOW)


def test_the_timestamp_is_part_of_what_is_signed() -> None:
    header = sign(secret=SECRET, body=BODY, timestamp=NOW)
    moved = header.replace(f"t={NOW}", f"t={NOW + 1}")
    assert not verify(secret=SECRET, header=moved, body=BODY, now=NOW)


@pytest.mark.parametrize("skew", [-301, 301, -86_400, 86_400])
def test_a_stale_or_future_timestamp_fails_as_a_replay(skew: int) -> None:
    header = sign(secret=SECRET, body=BODY, timestamp=NOW + skew)
    assert not verify(secret=SECRET, header=header, body=BODY, now=NOW)


@pytest.mark.parametrize("skew", [-300, 0, 300])
def test_a_timestamp_within_the_tolerance_verifies(skew: int) -> None:
    header = sign(secret=SECRET, body=BODY, timestamp=NOW + skew)
    assert verify(secret=SECRET, header=header, body=BODY, now=NOW)


def test_the_tolerance_can_be_narrowed() -> None:
    header = sign(secret=SECRET, body=BODY, timestamp=NOW - 10)
    assert not verify(secret=SECRET, header=header, body=BODY, now=NOW, tolerance=5)


def _mac_of(header: str) -> str:
    return header.split("v1=")[1]


@pytest.mark.parametrize(
    "make_header",
    [
        lambda good: "",
        lambda good: "garbage",
        lambda good: _mac_of(good),
        lambda good: f"v1={_mac_of(good)}",
        lambda good: f"t={NOW}",
        lambda good: f"t={NOW},v1=",
        lambda good: f"t=,v1={_mac_of(good)}",
        lambda good: f"t=soon,v1={_mac_of(good)}",
        lambda good: f"t=-{NOW},v1={_mac_of(good)}",
        lambda good: f"t={NOW},t={NOW},v1={_mac_of(good)}",
        lambda good: f"t={NOW};v1={_mac_of(good)}",
        lambda good: f"t={NOW},v1=é{_mac_of(good)[1:]}",
        lambda good: f"t=١٧٠٠٠٠٠٠٠٠,v1={_mac_of(good)}",
    ],
    ids=[
        "empty",
        "garbage",
        "bare-mac",
        "no-timestamp",
        "no-mac",
        "empty-mac",
        "empty-timestamp",
        "word-timestamp",
        "negative-timestamp",
        "two-timestamps",
        "semicolon",
        "non-ascii-mac",
        "non-ascii-digits",
    ],
)
def test_a_malformed_header_fails_verification(make_header: Any) -> None:
    good = sign(secret=SECRET, body=BODY, timestamp=NOW)
    assert not verify(secret=SECRET, header=make_header(good), body=BODY, now=NOW)


def test_verification_with_an_empty_secret_always_fails() -> None:
    # What an HMAC under an empty key looks like: anyone can compute it.
    header = f"t={NOW},v1=" + hmac.new(b"", f"{NOW}.{BODY}".encode(), hashlib.sha256).hexdigest()
    assert not verify(secret="", header=header, body=BODY, now=NOW)


def test_signing_with_an_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="empty secret"):
        sign(secret="", body=BODY, timestamp=NOW)


# --- delivery: the task against a real receiver, in this process ----------------------


@pytest.fixture
def secret(settings: Any) -> str:
    settings.BATON_WEBHOOK_SECRET = SECRET
    return SECRET


def test_a_2xx_is_delivered_once_with_event_type_and_a_valid_signature(
    secret: str, make_receiver: Any, countdowns: list[float]
) -> None:
    receiver = make_receiver(204)
    result = deliver(receiver.url, BODY)
    assert result.get() is True
    assert countdowns == []
    [received] = receiver.requests
    assert received.path == "/hooks/baton"
    assert received.body == BODY
    assert received.headers["X-Baton-Event"] == "approval.requested"
    assert received.headers["Content-Type"] == "application/json"
    assert signed_by_us(received)
    assert not signed_by_us(received, secret="another")


def test_a_503_is_retried_with_growing_countdowns_until_delivered(
    secret: str, make_receiver: Any, countdowns: list[float]
) -> None:
    receiver = make_receiver(503, 503, 200)
    assert deliver(receiver.url, BODY).get() is True
    assert countdowns == [5, 10]
    assert len(receiver.requests) == 3
    assert all(r.body == BODY and signed_by_us(r) for r in receiver.requests)
    # One event, one id, however often it is sent: the receiver keeps one.
    assert {header(r, "webhook-id") for r in receiver.requests} == {message_id(BODY)}


@pytest.mark.parametrize("status", [408, 429, 500, 502, 302])
def test_timeouts_throttling_server_errors_and_redirects_are_retried(
    status: int, secret: str, make_receiver: Any, countdowns: list[float]
) -> None:
    receiver = make_receiver(status, 200)
    assert deliver(receiver.url, BODY).get() is True
    assert countdowns == [5]
    assert len(receiver.requests) == 2


def test_a_refused_connection_is_retried_eight_times_with_back_off_then_given_up(
    secret: str, countdowns: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}/hooks"
    with caplog.at_level(logging.WARNING, logger="approvals.tasks"):
        result = deliver(nobody, BODY)
    assert result.get() is False
    assert countdowns == [5, 10, 20, 40, 80, 160, 320, 600]
    failures = [r.getMessage() for r in caplog.records if r.name == "approvals.tasks"]
    assert len(failures) == 9, "every attempt logs its failure"
    assert all(nobody in line for line in failures)
    assert "giving up" in failures[-1]


@pytest.mark.parametrize("status", [400, 401, 404, 410, 422])
def test_a_client_error_is_given_up_at_once(
    status: int,
    secret: str,
    make_receiver: Any,
    countdowns: list[float],
    caplog: pytest.LogCaptureFixture,
) -> None:
    receiver = make_receiver(status, 200)
    with caplog.at_level(logging.ERROR, logger="approvals.tasks"):
        assert deliver(receiver.url, BODY).get() is False
    assert countdowns == []
    assert len(receiver.requests) == 1
    [line] = [r.getMessage() for r in caplog.records if r.name == "approvals.tasks"]
    assert receiver.url in line and str(status) in line


def test_the_task_never_sends_unsigned_when_the_secret_is_empty(
    settings: Any, make_receiver: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.BATON_WEBHOOK_SECRET = ""
    receiver = make_receiver(200)
    with caplog.at_level(logging.ERROR, logger="approvals.tasks"):
        # The task has returned: had it sent anything, the receiver would hold it by now.
        assert deliver(receiver.url, BODY).get() is False
    assert receiver.requests == []
    assert "BATON_WEBHOOK_SECRET" in caplog.text


def test_a_non_http_url_is_never_opened(secret: str, tmp_path: Any) -> None:
    target = tmp_path / "hook"
    target.write_text("")
    assert deliver(f"file://{target}", BODY).get() is False


# --- notifying on commit: who is told, and only if the change commits ------------------


@pytest.fixture
def people(world: Any) -> Any:
    """Everyone has an address, so an address never hides who was chosen."""
    for user in (
        world.supervisor,
        world.second_supervisor,
        world.support_supervisor,
        world.compliance,
        world.admin,
        world.outsider,
    ):
        user.email = f"{user.username}@example.com"
        user.save(update_fields=["email"])
    return world


@pytest.fixture
def mailbox(settings: Any) -> list[Any]:
    settings.EMAIL_BACKEND = LOCMEM
    settings.DEFAULT_FROM_EMAIL = "baton@example.com"
    return mail.outbox


def held_payment(make_agent: Any, user: Any = None, amount: int = 4200) -> ApprovalRequest:
    agent = make_agent("payer", "tests.support.agents.payout_with_fallback", HOLD_PAY)
    run = run_start(agent=agent, input={"claim_id": "c1", "amount": amount}, user=user)
    execute_run(run.pk)
    return ApprovalRequest.objects.get(run=run)


def addressees(outbox: list[Any]) -> list[str]:
    return sorted(address for message in outbox for address in message.to)


def test_supervisors_of_the_agent_are_emailed_and_nobody_else(
    people: Any,
    make_agent: Any,
    mailbox: list[Any],
    django_capture_on_commit_callbacks: Any,
) -> None:
    request = held_payment(make_agent)
    with django_capture_on_commit_callbacks(execute=True):
        notify_on_commit(event="approval.requested", request_id=request.pk)
    assert addressees(mailbox) == ["sam@example.com", "sol@example.com"]
    assert all(len(message.to) == 1 for message in mailbox), "one message per person"
    message = mailbox[0]
    assert message.from_email == "baton@example.com"
    assert message.subject.startswith("[Baton] Approval needed: test.pay by Payer, due ")
    assert message.subject.endswith("UTC")
    assert '"amount": 4200' in message.body and '"claim_id": "c1"' in message.body
    assert f"/approvals/{request.pk}/" in message.body


def test_nothing_is_sent_before_the_transaction_commits(
    people: Any,
    make_agent: Any,
    mailbox: list[Any],
    django_capture_on_commit_callbacks: Any,
) -> None:
    request = held_payment(make_agent)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        notify_on_commit(event="approval.requested", request_id=request.pk)
        assert mailbox == []
    assert len(callbacks) == 1 and mailbox == []


def test_nothing_is_sent_when_the_transaction_rolls_back(
    people: Any,
    make_agent: Any,
    mailbox: list[Any],
    secret: str,
    settings: Any,
    redis_client: Any,
    task_queue: str,
    django_capture_on_commit_callbacks: Any,
) -> None:
    settings.BATON_WEBHOOK_URLS = ["http://127.0.0.1:9/hooks"]
    request = held_payment(make_agent)

    class Abort(Exception):
        pass

    with (
        django_capture_on_commit_callbacks(execute=True) as callbacks,
        pytest.raises(Abort),
        transaction.atomic(),
    ):
        notify_on_commit(event="approval.requested", request_id=request.pk)
        raise Abort
    assert callbacks == []
    assert mailbox == []
    assert queued_tasks(redis_client, task_queue) == []


def test_people_without_an_email_address_are_not_mailed(
    people: Any,
    make_agent: Any,
    mailbox: list[Any],
    django_capture_on_commit_callbacks: Any,
) -> None:
    people.second_supervisor.email = ""
    people.second_supervisor.save(update_fields=["email"])
    request = held_payment(make_agent)
    with django_capture_on_commit_callbacks(execute=True):
        notify_on_commit(event="approval.requested", request_id=request.pk)
    assert addressees(mailbox) == ["sam@example.com"]


def test_inactive_supervisors_are_not_mailed(
    people: Any,
    make_agent: Any,
    mailbox: list[Any],
    django_capture_on_commit_callbacks: Any,
) -> None:
    people.second_supervisor.is_active = False
    people.second_supervisor.save(update_fields=["is_active"])
    request = held_payment(make_agent)
    with django_capture_on_commit_callbacks(execute=True):
        notify_on_commit(event="approval.requested", request_id=request.pk)
    assert addressees(mailbox) == ["sam@example.com"]


def test_the_supervisor_who_launched_the_run_is_not_asked_to_decide_it(
    people: Any, make_agent: Any
) -> None:
    request = held_payment(make_agent, user=people.supervisor)
    assert list(recipients(request)) == [people.second_supervisor]


def test_a_support_agent_is_announced_to_support_supervisors_only(
    people: Any, make_agent: Any, mailbox: list[Any], django_capture_on_commit_callbacks: Any
) -> None:
    agent = make_agent(
        "helper", "tests.support.agents.payout_with_fallback", HOLD_PAY, team=people.support
    )
    run = run_start(agent=agent, input={"claim_id": "s1", "amount": 5})
    execute_run(run.pk)
    request = ApprovalRequest.objects.get(run=run)
    with django_capture_on_commit_callbacks(execute=True):
        notify_on_commit(event="approval.requested", request_id=request.pk)
    assert addressees(mailbox) == ["sue@example.com"]


@pytest.mark.parametrize(
    ("event", "subject"),
    [
        ("approval.requested", "[Baton] Approval needed: test.pay by Payer, due "),
        ("approval.escalated", "[Baton] Escalated (level 0): test.pay by Payer, due "),
        ("approval.expired", "[Baton] Expired undecided: test.pay by Payer"),
    ],
)
def test_each_event_has_its_own_subject(
    event: str,
    subject: str,
    people: Any,
    make_agent: Any,
    mailbox: list[Any],
    django_capture_on_commit_callbacks: Any,
) -> None:
    request = held_payment(make_agent)
    with django_capture_on_commit_callbacks(execute=True):
        notify_on_commit(event=event, request_id=request.pk)
    assert {message.subject for message in mailbox} == {mailbox[0].subject}
    assert mailbox[0].subject.startswith(subject)


def test_an_unknown_event_is_refused_inside_the_transaction(db: Any) -> None:
    with pytest.raises(ValueError, match="unknown approval event"):
        notify_on_commit(event="approval.requestd", request_id=1)
    assert "approval.requested" in EVENTS


def test_the_webhook_body_carries_the_request_and_a_link(
    people: Any, make_agent: Any, settings: Any
) -> None:
    settings.BATON_BASE_URL = "https://baton.example.com/"
    request = held_payment(make_agent)
    assert request.due_at is not None
    body = webhook_body(event="approval.requested", request=request)
    assert body == json.dumps(json.loads(body), sort_keys=True, separators=(",", ":"))
    assert json.loads(body) == {
        "event": "approval.requested",
        "request_id": request.pk,
        "status": "pending",
        "agent": {"slug": "payer", "name": "Payer"},
        "team": {"slug": "claims"},
        "tool": "test.pay",
        "args": {"claim_id": "c1", "amount": 4200},
        "risk": "high",
        "required_approvals": 1,
        "due_at": request.due_at.isoformat().replace("+00:00", "Z"),
        "escalation_level": 0,
        "run_id": request.run_id,
        "url": f"https://baton.example.com/approvals/{request.pk}/",
    }


def test_without_a_base_url_the_link_is_a_path(people: Any, make_agent: Any) -> None:
    request = held_payment(make_agent)
    body = json.loads(webhook_body(event="approval.expired", request=request))
    assert body["url"] == f"/approvals/{request.pk}/"


def test_each_webhook_url_gets_one_task_with_the_body_on_commit(
    people: Any,
    make_agent: Any,
    mailbox: list[Any],
    secret: str,
    settings: Any,
    redis_client: Any,
    task_queue: str,
    django_capture_on_commit_callbacks: Any,
) -> None:
    urls = ["http://127.0.0.1:9/a", "http://127.0.0.1:9/b"]
    settings.BATON_WEBHOOK_URLS = urls
    request = held_payment(make_agent)
    with django_capture_on_commit_callbacks(execute=True):
        notify_on_commit(event="approval.escalated", request_id=request.pk)
    body = webhook_body(event="approval.escalated", request=request)
    assert sorted(queued_tasks(redis_client, task_queue)) == [
        ("approvals.webhook_deliver", [url, body, message_id(body)]) for url in urls
    ]


def test_no_webhook_is_enqueued_unsigned_when_the_secret_is_empty(
    people: Any,
    make_agent: Any,
    mailbox: list[Any],
    settings: Any,
    redis_client: Any,
    task_queue: str,
    caplog: pytest.LogCaptureFixture,
    django_capture_on_commit_callbacks: Any,
) -> None:
    settings.BATON_WEBHOOK_URLS = ["http://127.0.0.1:9/a", "http://127.0.0.1:9/b"]
    settings.BATON_WEBHOOK_SECRET = ""
    request = held_payment(make_agent)
    with (
        caplog.at_level(logging.ERROR, logger="approvals.notifications"),
        django_capture_on_commit_callbacks(execute=True),
    ):
        notify_on_commit(event="approval.requested", request_id=request.pk)
    assert queued_tasks(redis_client, task_queue) == []
    errors = [r for r in caplog.records if r.name == "approvals.notifications"]
    assert len(errors) == 1, "one error for the event, not one per URL"
    assert "BATON_WEBHOOK_SECRET" in errors[0].getMessage()
    assert len(mailbox) == 2, "e-mail does not depend on the webhook secret"


def test_a_mail_outage_breaks_neither_the_commit_nor_the_webhooks(
    people: Any,
    make_agent: Any,
    secret: str,
    settings: Any,
    redis_client: Any,
    task_queue: str,
    caplog: pytest.LogCaptureFixture,
    django_capture_on_commit_callbacks: Any,
) -> None:
    # A real SMTP connection to a port where nothing listens.
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", free_port(), 3
    settings.BATON_WEBHOOK_URLS = ["http://127.0.0.1:9/a"]
    request = held_payment(make_agent)
    with (
        caplog.at_level(logging.ERROR, logger="approvals.notifications"),
        django_capture_on_commit_callbacks(execute=True),
    ):
        notify_on_commit(event="approval.requested", request_id=request.pk)
    assert "could not e-mail approval.requested" in caplog.text
    assert [name for name, _ in queued_tasks(redis_client, task_queue)] == [
        "approvals.webhook_deliver"
    ]


# --- end to end: commit, a real worker process, a real receiver -------------------------


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_committed_request_reaches_the_receiver_signed_through_a_worker_after_a_503(
    people: Any,
    make_agent: Any,
    mailbox: list[Any],
    settings: Any,
    start_worker: Any,
    make_receiver: Any,
) -> None:
    # Needs settings.py to read BATON_WEBHOOK_SECRET from the environment: the worker
    # signs with its own settings.
    worker = start_worker(BATON_WEBHOOK_SECRET=SECRET)
    receiver = make_receiver(503, 200)
    settings.BATON_WEBHOOK_URLS = [receiver.url]
    settings.BATON_WEBHOOK_SECRET = SECRET
    agent = make_agent("payer", "tests.support.agents.payout_with_fallback", HOLD_PAY)
    run = run_start(agent=agent, input={"claim_id": "w1", "amount": 75})
    request = wait_for(
        lambda: ApprovalRequest.objects.filter(run=run).first(), message="the held payment"
    )

    with transaction.atomic():
        notify_on_commit(event="approval.requested", request_id=request.pk)
        assert mailbox == [], "nothing leaves before the commit"
    assert addressees(mailbox) == ["sam@example.com", "sol@example.com"]

    wait_for(
        lambda: len(receiver.requests) >= 2,
        timeout=40,
        message=f"the retried delivery; worker log:\n{worker.log}",
    )
    first, second = receiver.requests[:2]
    body = webhook_body(event="approval.requested", request=request)
    for received in (first, second):
        assert received.body == body
        assert received.headers["X-Baton-Event"] == "approval.requested"
        assert received.headers["Content-Type"] == "application/json"
        assert signed_by_us(received), worker.log.read_text()[-3000:]
    assert second.at - first.at >= 4.5, "the retry waited for its 5 s countdown"
    # The delivery that got its 200 has ended; no retry can follow a finished delivery.
    wait_for(
        lambda: worker.finished("approvals.webhook_deliver") >= 1,
        message="the delivery task to end",
    )
    assert len(receiver.requests) == 2, "a delivered event is not sent again"


# --- Standard Webhooks ------------------------------------------------------------------


def test_a_whsec_secret_signs_what_the_standard_library_verifies_and_a_tampered_body_fails(
    settings: Any, make_receiver: Any
) -> None:
    from django.core.management import call_command

    out = io.StringIO()
    call_command("webhook_secret", stdout=out)
    secret = out.getvalue().strip()
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    settings.BATON_WEBHOOK_SECRET = secret
    receiver = make_receiver(200)
    assert deliver(receiver.url, BODY).get() is True
    [received] = receiver.requests
    assert Webhook(secret).verify(received.body, received.headers) == json.loads(BODY)
    assert header(received, "webhook-id") == message_id(BODY)
    assert abs(int(header(received, "webhook-timestamp")) - time.time()) < 300
    assert header(received, "webhook-signature").startswith("v1,")
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(received.body.replace("7", "8"), received.headers)
    other = "whsec_" + base64.b64encode(b"x" * 32).decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(received.body, received.headers)


def test_each_event_has_its_own_webhook_id() -> None:
    other = BODY.replace("requested", "escalated")
    assert message_id(BODY) != message_id(other)
    assert message_id(BODY) == message_id(BODY)


@pytest.mark.parametrize(
    "secret", ["whsec_not base64!", "whsec_" + base64.b64encode(b"short").decode()]
)
def test_a_malformed_whsec_secret_fails_the_start_up_check_and_sends_nothing(
    secret: str, settings: Any, make_receiver: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from approvals.checks import webhook_secret_usable

    settings.BATON_WEBHOOK_SECRET = secret
    [error] = webhook_secret_usable(None)
    assert error.id == "approvals.E001" and "webhook_secret" in error.msg
    receiver = make_receiver(200)
    with caplog.at_level(logging.ERROR, logger="approvals.tasks"):
        assert deliver(receiver.url, BODY).get() is False
    assert receiver.requests == []
    settings.BATON_WEBHOOK_SECRET = SECRET
    assert webhook_secret_usable(None) == []


def test_a_message_enqueued_without_an_id_is_still_delivered_with_the_bodys_id(
    secret: str, make_receiver: Any
) -> None:
    receiver = make_receiver(200)
    assert webhook_deliver.apply(args=(receiver.url, BODY)).get() is True
    [received] = receiver.requests
    assert header(received, "webhook-id") == message_id(BODY)
    assert signed_by_us(received)
