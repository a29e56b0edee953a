"""Evidence export: streamed, recorded in the trail, and checkable offline with nothing
but the public key — any changed byte is caught."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
from django.contrib.auth.models import Group, Permission
from django.test import Client
from hypothesis import given
from hypothesis import strategies as st

from agents.runtime import execute_run
from agents.services import run_start
from audit import offline
from audit.models import AuditEvent
from audit.signing import key_id, public_pem, signing_key
from audit.verbs import Verb
from tests.conftest import ALLOW_ALL_TESTS

pytestmark = pytest.mark.django_db


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def keys() -> dict[str, Any]:
    private = signing_key()
    assert private is not None
    return {key_id(private.public_key()): private.public_key()}


def export(client: Client, query: str = "") -> Any:
    """POST the export form with the filters of `query` ("?format=csv&agent=…")."""
    return client.post("/audit/export", dict(parse_qsl(query.removeprefix("?"))))


def download(client: Client, query: str = "") -> bytes:
    response = export(client, query)
    assert response.status_code == 200, response.content
    return b"".join(response.streaming_content)


@pytest.fixture
def trail(make_agent: Any, world: Any) -> Any:
    claims = make_agent("counter", "tests.support.agents.counter", ALLOW_ALL_TESTS)
    support = make_agent(
        "helper", "tests.support.agents.counter", ALLOW_ALL_TESTS, team=world.support
    )
    for agent in (claims, support, claims):
        execute_run(run_start(agent=agent, input={"label": "é ✓", "steps": 2}).pk)
    return claims, support


def test_a_full_export_verifies_offline_and_is_itself_recorded(trail: Any, world: Any) -> None:
    data = download(client_for(world.compliance), "?format=jsonl")
    report = offline.verify(data, keys())
    assert report.ok, report.problems
    assert report.events == AuditEvent.objects.count()
    assert report.links == 0 and report.checkpoints >= 1
    exported = AuditEvent.objects.get(verb=Verb.AUDIT_EXPORTED)
    assert exported.actor_label == "cora"
    assert exported.payload == {"filter": {}, "format": "jsonl"}


def test_a_filtered_export_shows_only_matches_and_proves_the_rest_by_digest(
    trail: Any, world: Any
) -> None:
    claims, _ = trail
    data = download(client_for(world.compliance), f"?agent={claims.slug}&format=jsonl")
    report = offline.verify(data, keys())
    assert report.ok, report.problems
    shown = AuditEvent.objects.filter(agent_id=claims.pk).count()
    assert report.events == shown and report.links > 0
    assert b'"actor_label":"helper"' not in data


def test_a_csv_export_verifies_offline(trail: Any, world: Any) -> None:
    claims, _ = trail
    data = download(client_for(world.compliance), f"?format=csv&verb={Verb.ACTION_SUCCEEDED}")
    assert data.startswith(b"record,seq,prev_hash,hash,digest,occurred_at")
    report = offline.verify(data, keys())
    assert report.ok, report.problems
    assert report.events == AuditEvent.objects.filter(verb=Verb.ACTION_SUCCEEDED).count()


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_any_flipped_byte_is_caught(trail: Any, world: Any, fmt: str) -> None:
    data = download(client_for(world.compliance), f"?format={fmt}")
    assert offline.verify(data, keys()).ok
    chooser = random.Random(5)
    for position in chooser.sample(range(len(data)), 150):
        flipped = bytearray(data)
        flipped[position] ^= 1 << chooser.randrange(8)
        report = offline.verify(bytes(flipped), keys())
        assert not report.ok, f"byte {position} flipped went unnoticed"


def test_a_changed_event_is_named_even_where_the_seal_alone_would_tell(
    trail: Any, world: Any
) -> None:
    data = download(client_for(world.compliance), "?format=jsonl")
    target = AuditEvent.objects.filter(verb=Verb.ACTION_ALLOWED).order_by("seq").first()
    assert target is not None
    lines = data.split(b"\n")
    for n, line in enumerate(lines):
        if line.startswith(f'{{"type":"event","seq":{target.seq},'.encode()):
            lines[n] = line.replace(b'"n":0', b'"n":7')
    report = offline.verify(b"\n".join(lines), keys())
    assert not report.ok
    assert any(f"#{target.seq} does not match its hash" in p for p in report.problems)


def test_the_downloaded_verifier_and_key_check_an_export_with_no_baton_code(
    trail: Any, world: Any, tmp_path: Path
) -> None:
    client = client_for(world.compliance)
    (tmp_path / "export.jsonl").write_bytes(download(client, "?format=jsonl"))
    (tmp_path / "key.pem").write_bytes(client.get("/audit/public-key.pem").content)
    (tmp_path / "verify.py").write_bytes(client.get("/audit/verifier.py").content)

    def run(export: str) -> subprocess.CompletedProcess[str]:
        # -I: isolated, so nothing of this checkout is importable.
        return subprocess.run(
            [sys.executable, "-I", "verify.py", export, "--public-key", "key.pem"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )

    done = run("export.jsonl")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("OK:")
    shutil.copy(tmp_path / "export.jsonl", tmp_path / "bad.jsonl")
    with (tmp_path / "bad.jsonl").open("r+b") as bad:
        bad.seek(300)
        byte = bad.read(1)
        bad.seek(300)
        bad.write(bytes([byte[0] ^ 2]))
    done = run("bad.jsonl")
    assert done.returncode == 1
    assert done.stdout.startswith("FAILED:")


def test_an_export_checked_with_another_key_fails(trail: Any, world: Any) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    data = download(client_for(world.compliance), "?format=jsonl")
    other = Ed25519PrivateKey.generate().public_key()
    report = offline.verify(data, {key_id(other): other})
    assert not report.ok
    assert offline.load_keys(public_pem(other)) == {key_id(other): other}


def test_export_is_a_permission_of_its_own(trail: Any, world: Any) -> None:
    assert export(client_for(world.supervisor)).status_code == 403
    assert export(client_for(world.outsider)).status_code == 403
    group = Group.objects.get(name="Compliance")
    group.permissions.remove(Permission.objects.get(codename="export_auditevent"))
    assert client_for(world.compliance).get("/audit/").status_code == 200
    assert export(client_for(world.compliance)).status_code == 403
    assert not AuditEvent.objects.filter(verb=Verb.AUDIT_EXPORTED).exists()


def test_an_export_is_a_post_with_a_csrf_token(trail: Any, world: Any) -> None:
    # A GET (a link or an <img> on another site) takes no export and writes nothing.
    assert client_for(world.compliance).get("/audit/export?format=jsonl").status_code == 405
    # A form posted from another site carries no CSRF token: refused, nothing written.
    cross_site = Client(enforce_csrf_checks=True)
    cross_site.force_login(world.compliance)
    assert cross_site.post("/audit/export", {"format": "jsonl"}).status_code == 403
    assert not AuditEvent.objects.filter(verb=Verb.AUDIT_EXPORTED).exists()

    # The page's own form carries the token and the page's filters.
    page = cross_site.get("/audit/?agent=counter").content.decode()
    assert 'method="post" action="/audit/export"' in page
    assert '<input type="hidden" name="agent" value="counter">' in page
    token = cross_site.cookies["csrftoken"].value
    response = cross_site.post(
        "/audit/export", {"format": "jsonl", "agent": "counter", "csrfmiddlewaretoken": token}
    )
    assert response.status_code == 200
    response.getvalue()  # read the streamed export to its end, as a download does
    exported = AuditEvent.objects.get(verb=Verb.AUDIT_EXPORTED)
    assert exported.payload == {"filter": {"agent": "counter"}, "format": "jsonl"}


def test_an_agent_admin_reads_the_trail_of_their_team_and_does_not_export(
    trail: Any, world: Any
) -> None:
    client = client_for(world.admin)  # agent admin granted the claims team
    page = client.get("/audit/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "counter" in html and "helper" not in html  # their team's agent, not support's
    assert 'data-testid="export"' not in html
    assert export(client, "?format=jsonl").status_code == 403
    assert export(client, "?format=csv&agent=counter").status_code == 403
    assert not AuditEvent.objects.filter(verb=Verb.AUDIT_EXPORTED).exists()
    assert (
        not Group.objects.get(name="Agent admin")
        .permissions.filter(codename="export_auditevent")
        .exists()
    )


def test_a_supervisor_allowed_to_export_gets_only_their_teams_events(
    trail: Any, world: Any
) -> None:
    world.supervisor.user_permissions.add(Permission.objects.get(codename="export_auditevent"))
    data = download(client_for(world.supervisor), "?format=jsonl")
    report = offline.verify(data, keys())
    assert report.ok, report.problems
    assert b'"actor_label":"helper"' not in data
    assert report.events == AuditEvent.objects.filter(team_id=world.claims.pk).count()


@pytest.mark.parametrize(
    "query",
    ["?format=xml", "?since=yesterday", "?agent=nobody", "?run=abc", "?since=2026-02-30"],
)
def test_a_bad_export_request_says_why_and_records_nothing(
    trail: Any, world: Any, query: str
) -> None:
    before = AuditEvent.objects.count()
    response = export(client_for(world.compliance), query)
    assert response.status_code == 400
    assert response.content.strip()
    assert AuditEvent.objects.count() == before


json_values = st.recursive(
    # Integers a double holds exactly (the canonical form refuses others: test_canonical).
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@given(
    payload=st.dictionaries(
        st.sampled_from(["run_id", "payload", "a", ',"run_id":']) | st.text(),
        json_values,
        max_size=4,
    ),
    subject=st.text(),
)
def test_the_payload_is_cut_from_the_canonical_body_exactly(
    payload: dict[str, Any], subject: str
) -> None:
    from audit.chain import canonical_content, canonical_json
    from audit.export import payload_text

    content = {
        "occurred_at": "2026-11-22T10:00:00.000000Z",
        "actor_type": "user",
        "actor_id": 1,
        "actor_label": ',"payload":{"x":1}',
        "verb": "run.queued",
        "subject_type": "run",
        "subject_id": subject,
        "agent_id": None,
        "team_id": None,
        "run_id": None,
        "payload": payload,
    }
    body = canonical_content(content).decode()
    assert payload_text(body) == canonical_json(payload).decode()


def test_a_csv_export_of_awkward_text_verifies(trail: Any, world: Any) -> None:
    from django.db import transaction

    from audit.services import SYSTEM, audit_record

    with transaction.atomic():
        audit_record(
            verb=Verb.RUN_QUEUED,
            actor=SYSTEM,
            subject_type="run",
            subject_id='7, "quoted"',
            payload={"note": 'a, "b"\nc', "run_id": {"payload": ',"run_id":'}, "n": 1e20},
        )
    data = download(client_for(world.compliance), "?format=csv")
    report = offline.verify(data, keys())
    assert report.ok, report.problems
    assert report.events == AuditEvent.objects.count()
