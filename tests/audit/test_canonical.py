"""The portable canonical form (audit/FORMAT.md): new events are RFC 8785 with a format
version, events of format 1 still verify, and a second verifier written in JavaScript
from the documentation alone checks the chain and both export layouts."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from django.db import transaction
from django.db.models import Q
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.runtime import execute_run
from agents.services import run_start
from audit import offline
from audit.chain import (
    CanonicalFormError,
    canonical_body,
    canonical_content_v1,
    canonical_json,
    chain_hash,
)
from audit.export import csv_chunks, export_plan, jsonl_chunks
from audit.jsonsafe import Unstorable
from audit.models import AuditEvent, ChainHead
from audit.services import SYSTEM, Actor, audit_record, event_content
from audit.signing import checkpoint_sign, key_id, public_pem, signing_key
from audit.verbs import Verb
from audit.verify import chain_verify
from tests.conftest import ALLOW_ALL_TESTS, chained

pytestmark = pytest.mark.django_db

VERIFY_JS = Path(__file__).resolve().parents[2] / "audit" / "verify.js"
NODE = shutil.which("node") or "/usr/bin/node"

# Values where Python's json and RFC 8785 part ways, or where a hand-written canonicaliser
# goes wrong: floats with an integral value, exponents, the edges of the double, escapes,
# keys that sort differently by code point and by UTF-16 code unit, empties, nesting.
AWKWARD: list[Any] = [
    1354.0,
    -0.0,
    0.1,
    1e16,
    1e20,
    1e21,
    1.5e-7,
    1e-6,
    5e-324,
    1.7976931348623157e308,
    -1e-300,
    123456789.123456789,
    2**53 - 1,
    -(2**53 - 1),
    10**20,
    "",
    "é ✓ 漢字 😀",
    'quote " backslash \\ slash / tab \t newline \n return \r',
    "\x01\x08\x0c\x1f\x7f \u2028 \u2029 \ufeff",
    {"": "", "a": {}, "b": [], "c": [[]], "d": [{}]},
    {"\ue000": 1, "😀": 2, "z": 3, "é": 4, "A": 5, "_": 6, "1": 7, "10": 8, "2": 9},
    {"deep": {"er": {"and": {"deeper": [1, [2, [3, {"x": None, "t": True, "f": False}]]]}}}},
    [1.0, 2.5, -3, "x", None, True],
]


def awkward_payload() -> dict[str, Any]:
    return {f"v{n:02d}": value for n, value in enumerate(AWKWARD)} | {"note": "tamper-me"}


def node(*args: str) -> subprocess.CompletedProcess[str]:
    assert Path(NODE).exists(), "Node is needed (make test installs Debian's nodejs)"
    return subprocess.run(
        [NODE, str(VERIFY_JS), *args], capture_output=True, text=True, timeout=120
    )


def record(payload: dict[str, Any], **fields: Any) -> int:
    with transaction.atomic():
        return chained(
            audit_record(
                verb=Verb.RUN_QUEUED,
                actor=fields.pop("actor", SYSTEM),
                subject_type="run",
                subject_id=fields.pop("subject_id", 1),
                payload=payload,
            )
        )


def append_format_1(payload: dict[str, Any]) -> int:
    """An event as Baton wrote them before format 2 (the trail keeps such events)."""
    content = event_content(
        verb=Verb.RUN_QUEUED, actor=SYSTEM, subject_type="run", subject_id="old", payload=payload
    )
    with transaction.atomic():
        head = ChainHead.objects.select_for_update().get(pk=1)
        seq, body = head.seq + 1, canonical_content_v1(content)
        digest = chain_hash(head.hash, seq, body)
        AuditEvent.objects.create(seq=seq, body=body.decode(), prev_hash=head.hash, hash=digest)
        ChainHead.objects.filter(pk=1).update(seq=seq, hash=digest)
    return seq


def export(fmt: str, matched: Q | None = None) -> bytes:
    checkpoint = checkpoint_sign()
    assert checkpoint is not None
    matched = matched if matched is not None else Q(seq__gt=0)
    plan = export_plan(matched, up_to=checkpoint.seq)
    chunks = jsonl_chunks if fmt == "jsonl" else csv_chunks
    return b"".join(
        chunks(plan, matched, by="cora", filters={}, generated_at="2026-11-30T00:00:00.000000Z")
    )


def public_key_file(tmp_path: Path) -> Path:
    private = signing_key()
    assert private is not None
    path = tmp_path / "key.pem"
    path.write_bytes(public_pem(private.public_key()))
    return path


def python_keys() -> dict[str, Any]:
    private = signing_key()
    assert private is not None
    return {key_id(private.public_key()): private.public_key()}


@pytest.fixture
def trail(make_agent: Any, world: Any) -> list[int]:
    """Real events from every writer (a run through the gateway's SQL path, Python
    appends), of both formats, with awkward content."""
    agent = make_agent("counter", "tests.support.agents.counter", ALLOW_ALL_TESTS)
    execute_run(run_start(agent=agent, input={"label": 'é ✓ \n "q"', "steps": 2}).pk)
    old = append_format_1({"amount": 1354.0, "small": 1e-07, "big": 1e16, "int": 10**20})
    seqs = [old]
    seqs.append(record(awkward_payload(), subject_id='7, "quoted"\nline'))
    seqs.append(
        record({"": "", "nested": {"a": [1.0, {"b": ""}]}}, actor=Actor.user(world.compliance))
    )
    seqs.append(append_format_1({"after": 2.0, "ünïcode": "✓"}))
    seqs.append(record({"last": 0.30000000000000004}))
    return seqs


def test_new_events_are_rfc_8785_and_say_their_format(world: Any) -> None:
    seq = record(awkward_payload())
    body = AuditEvent.objects.get(seq=seq).body
    content = json.loads(body)
    assert content["format"] == 2
    assert body.encode() == canonical_json(content) == canonical_body(content)
    assert '"v00":1354,' in body and '"v05":1e+21,' in body and '"v07":0.000001,' in body
    assert offline.jcs(content) == body  # the offline verifier's own JCS agrees


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (math.nan, "nan"),
        (math.inf, "inf"),
        (-math.inf, "inf"),
        (2**53 + 1, "not exactly a double"),
        (10**400, "beyond the range"),
        ("\ud800", "non-UTF-8"),
    ],
)
def test_what_the_canonical_form_cannot_hold_is_refused_and_nothing_is_written(
    world: Any, value: Any, why: str
) -> None:
    before = (AuditEvent.objects.count(), ChainHead.objects.filter(pk=1).first())
    # The trail's own check (audit.jsonsafe) refuses it first, as every boundary does…
    with pytest.raises(Unstorable):
        record({"amount": [value]})
    # …and the canonical form on its own refuses it too.
    with pytest.raises(CanonicalFormError, match=why):
        canonical_json({"amount": value})
    assert (AuditEvent.objects.count(), ChainHead.objects.filter(pk=1).first()) == before


def test_a_cycle_or_nesting_too_deep_to_walk_is_refused_the_same_way(world: Any) -> None:
    deep: list[Any] = []
    for _ in range(5000):
        deep = [deep]
    cycle: dict[str, Any] = {}
    cycle["self"] = cycle
    before = AuditEvent.objects.count()
    for payload in ({"deep": deep}, cycle):
        with pytest.raises(Unstorable):
            record(payload)
    with pytest.raises(CanonicalFormError, match="too deep"):
        canonical_json(deep)
    assert AuditEvent.objects.count() == before


def test_events_of_both_formats_verify_in_the_database(trail: list[int]) -> None:
    bodies = {seq: AuditEvent.objects.get(seq=seq).body for seq in trail}
    assert '"amount":1354.0' in bodies[trail[0]] and '"format"' not in bodies[trail[0]]
    assert '"format":2' in bodies[trail[1]]
    outcome = chain_verify()
    assert outcome.ok, outcome.problems
    for event in AuditEvent.objects.all():  # the gateway's SQL writers' too
        assert (event.seq in (trail[0], trail[3])) == ('"format"' not in event.body)
        assert canonical_body(json.loads(event.body)) == event.body.encode()


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_the_python_offline_verifier_reads_both_formats(trail: list[int], fmt: str) -> None:
    data = export(fmt)
    report = offline.verify(data, python_keys())
    assert report.ok, report.problems
    assert report.events == AuditEvent.objects.count()


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_the_javascript_verifier_accepts_an_intact_export(
    trail: list[int], fmt: str, tmp_path: Path
) -> None:
    (tmp_path / f"export.{fmt}").write_bytes(export(fmt))
    done = node(str(tmp_path / f"export.{fmt}"), "--public-key", str(public_key_file(tmp_path)))
    assert done.returncode == 0, done.stdout + done.stderr
    count = AuditEvent.objects.count()
    assert done.stdout.startswith(f"OK: #1..#{count} intact: {count} events shown,")


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_the_javascript_verifier_proves_what_a_filtered_export_leaves_out(
    trail: list[int], fmt: str, tmp_path: Path
) -> None:
    (tmp_path / "export").write_bytes(export(fmt, Q(verb=Verb.RUN_QUEUED)))
    done = node(str(tmp_path / "export"), "--public-key", str(public_key_file(tmp_path)))
    assert done.returncode == 0, done.stdout + done.stderr
    shown = AuditEvent.objects.filter(verb=Verb.RUN_QUEUED).count()
    linked = AuditEvent.objects.count() - shown
    assert f"{shown} events shown, {linked} linked by digest" in done.stdout


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
@pytest.mark.parametrize("which", [1, 2])
def test_the_javascript_verifier_names_the_seq_of_a_tampered_event(
    trail: list[int], fmt: str, which: int, tmp_path: Path
) -> None:
    """A changed value in one event (of format 1 or 2) is named by its seq, even though the
    seal alone would tell that something changed."""
    data = export(fmt)
    target = trail[0] if which == 1 else trail[1]
    before, after = (b"1354.0", b"1355.0") if which == 1 else (b"tamper-me", b"tampered!")
    assert data.count(before) == 1
    (tmp_path / "bad").write_bytes(data.replace(before, after))
    done = node(str(tmp_path / "bad"), "--public-key", str(public_key_file(tmp_path)))
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.startswith("FAILED:")
    assert f"#{target} does not match its hash" in done.stdout, done.stdout
    assert "do not match its seal" in done.stdout


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_the_javascript_verifier_refuses_another_key_and_a_cut_tail(
    trail: list[int], fmt: str, tmp_path: Path
) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    data = export(fmt)
    (tmp_path / "export").write_bytes(data)
    other = tmp_path / "other.pem"
    other.write_bytes(public_pem(Ed25519PrivateKey.generate().public_key()))
    done = node(str(tmp_path / "export"), "--public-key", str(other))
    assert done.returncode == 1 and "not signed by the given key" in done.stdout
    lines = data.split(b"\n")
    (tmp_path / "cut").write_bytes(b"\n".join(lines[:-3] + lines[-2:]))  # drop the last event
    done = node(str(tmp_path / "cut"), "--public-key", str(public_key_file(tmp_path)))
    assert done.returncode == 1 and "FAILED:" in done.stdout


def test_javascript_and_python_canonicalise_awkward_values_alike(tmp_path: Path) -> None:
    """Node's JSON.parse and a hand-written JCS against the rfc8785 package (and the
    offline verifier's own JCS), value by value."""
    values = [*AWKWARD, awkward_payload(), [[[[[]]]]], {"a": {"a": {"a": "a"}}}]
    values += [x * 10.0**e for x in (1.0, 1.5, 7.0, 1 / 3) for e in range(-25, 25)]
    (tmp_path / "values.jsonl").write_text(
        "".join(json.dumps(v, ensure_ascii=False) + "\n" for v in values)
    )
    done = node("--jcs", str(tmp_path / "values.jsonl"))
    assert done.returncode == 0, done.stderr
    from_node = done.stdout.split("\n")[:-1]
    assert len(from_node) == len(values)
    disagree = [
        (value, js)
        for value, js in zip(values, from_node, strict=True)
        if canonical_json(value).decode() != js or offline.jcs(value) != js
    ]
    assert not disagree


def test_an_export_of_format_1_still_verifies_in_both_verifiers(
    trail: list[int], tmp_path: Path
) -> None:
    """A CSV export as written before format 2 (export format /1: no `format` column, only
    format 1 events), sealed as it was then: auditors keep such files."""
    from audit.chain import export_seal_message

    old_events = Q(seq__in=[trail[0], trail[3]])
    rows = export("csv", old_events).decode().split("\n")[:-2]  # no seal, no final \n
    assert len(rows) > 10  # one row per event, the header, the export's and a checkpoint
    rows = [row.rsplit(",", 1)[0] for row in rows]  # the format column is the last
    rows = [row.replace("baton-audit-export/2", "baton-audit-export/1") for row in rows]
    assert rows[0].endswith(",signature")
    body = "\n".join(rows) + "\n"
    digest = hashlib.sha256(body.encode()).hexdigest()
    private = signing_key()
    assert private is not None
    signature = private.sign(export_seal_message(digest)).hex()
    seal = f"seal,,,{digest}" + "," * 14 + f"{key_id(private.public_key())},{signature}\n"
    (tmp_path / "old.csv").write_text(body + seal)
    report = offline.verify((tmp_path / "old.csv").read_bytes(), python_keys())
    assert report.ok, report.problems
    assert report.events == 2
    done = node(str(tmp_path / "old.csv"), "--public-key", str(public_key_file(tmp_path)))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 events shown" in done.stdout


def test_the_console_hands_out_the_javascript_verifier_and_the_format(
    trail: list[int], world: Any, tmp_path: Path
) -> None:
    from django.test import Client

    assert Client().get("/audit/verifier.js").status_code == 302  # to the login page
    client = Client()
    client.force_login(world.compliance)
    doc = client.get("/audit/format.md")
    assert doc.status_code == 200 and b"RFC 8785" in doc.content
    (tmp_path / "verify.js").write_bytes(client.get("/audit/verifier.js").content)
    (tmp_path / "key.pem").write_bytes(client.get("/audit/public-key.pem").content)
    (tmp_path / "export.jsonl").write_bytes(export("jsonl"))
    done = subprocess.run(
        [NODE, "verify.js", "export.jsonl", "--public-key", "key.pem"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("OK:")


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_an_event_claiming_format_2_in_another_form_is_named(
    trail: list[int], fmt: str, tmp_path: Path
) -> None:
    """Bytes that hash right but are not the RFC 8785 form they claim (a writer that got
    the form wrong, as Python's json does for 1354.0) are caught by both verifiers."""
    content = event_content(
        verb=Verb.RUN_QUEUED, actor=SYSTEM, subject_type="run", subject_id="x", payload={}
    )
    content["payload"] = {"amount": 1354.0}
    body = canonical_content_v1(content).replace(b'"occurred_at"', b'"format":2,"occurred_at"')
    with transaction.atomic():
        head = ChainHead.objects.select_for_update().get(pk=1)
        seq, digest = head.seq + 1, chain_hash(head.hash, head.seq + 1, body)
        AuditEvent.objects.create(seq=seq, body=body.decode(), prev_hash=head.hash, hash=digest)
        ChainHead.objects.filter(pk=1).update(seq=seq, hash=digest)
    data = export(fmt)
    (tmp_path / "export").write_bytes(data)
    done = node(str(tmp_path / "export"), "--public-key", str(public_key_file(tmp_path)))
    assert done.returncode == 1
    assert f"#{seq} is not a canonical event" in done.stdout, done.stdout
    report = offline.verify(data, python_keys())
    assert not report.ok and any(f"#{seq} " in p for p in report.problems)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([1354.0, 1e-4, 9.999e-5, 1e16, 9999999999999998.0, 0.5, -0.0, 1e21])
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=400)
@given(value=json_values)
def test_the_canonical_form_is_the_rfc_8785_package_s_on_any_value(value: Any) -> None:
    """canonical_json writes with Python's C encoder where that gives the same bytes: it
    must never differ from the package (nor from the offline verifier's own JCS)."""
    assert canonical_json(value) == rfc8785.dumps(value)
    assert canonical_json(value).decode() == offline.jcs(value)


def test_node_reads_every_event_of_the_demo_workload_as_python_wrote_it(
    db: Any, tmp_path: Path
) -> None:
    """The trail the demo agents write (payouts, purchase orders, e-mails, model calls,
    held actions): each event's bytes are what Node's RFC 8785 makes of them, and Node
    verifies the exports. (Before format 2, Node disagreed with 808 of 5,226 such events.)"""
    import random

    from agents.demo.seed import demo_seed, demo_workload_tick
    from agents.models import Run

    demo_seed()
    rng = random.Random(9)
    for _ in range(4):
        demo_workload_tick(rng)
        for run_id in Run.objects.filter(status=Run.Status.QUEUED).values_list("pk", flat=True):
            execute_run(run_id)
    bodies = list(AuditEvent.objects.order_by("seq").values_list("body", flat=True))
    assert len(bodies) > 50
    (tmp_path / "bodies.jsonl").write_text("".join(body + "\n" for body in bodies))
    done = node("--jcs", str(tmp_path / "bodies.jsonl"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:-1] == bodies
    for fmt in ("jsonl", "csv"):
        (tmp_path / "export").write_bytes(export(fmt))
        done = node(str(tmp_path / "export"), "--public-key", str(public_key_file(tmp_path)))
        assert done.returncode == 0, done.stdout + done.stderr
