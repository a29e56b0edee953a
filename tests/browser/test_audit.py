"""A compliance officer proves what happened to one agent's rejected payouts, in real
Chromium against the served console, and checks the evidence offline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from agents.demo.seed import CLAIMS_POLICY
from agents.models import Run
from agents.services import run_start
from approvals.models import ApprovalRequest
from approvals.services import approval_decide
from audit.models import AuditEvent
from audit.verbs import Verb
from tests.conftest import log_in, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]


def rejected_payout(agent: Any, world: Any, claim: str, reason: str) -> Run:
    run = run_start(
        agent=agent,
        input={
            "claim_id": claim,
            "policyholder": "Mei Chen",
            "description": "water damage after a storm",
            "amount": 4200,
        },
    )
    request = wait_for(
        lambda: ApprovalRequest.objects.filter(run=run).first(), message="the payout to be held"
    )
    approval_decide(
        request_id=request.pk,
        user=world.supervisor,
        verdict="reject",
        seen_args_hash=request.args_hash,
        comment=reason,
    )

    def finished() -> bool:
        run.refresh_from_db()
        return run.is_final

    wait_for(finished, message="the rejected run to finish")
    return run


def test_a_compliance_officer_traces_and_exports_an_agents_rejected_payouts(
    page: Any, console_server: Any, worker: Any, make_agent: Any, world: Any, tmp_path: Path
) -> None:
    payer = make_agent("claims-payer", "agents.demo.programs.claim_payout", CLAIMS_POLICY)
    other = make_agent("claims-payer-eu", "agents.demo.programs.claim_payout", CLAIMS_POLICY)
    run = rejected_payout(payer, world, "CLM-300", "the invoice is from another policy")
    rejected_payout(other, world, "CLM-301", "duplicate of CLM-300")

    log_in(page, console_server, "cora")
    page.get_by_role("link", name="Audit").click()
    page.fill("input[name=agent]", "claims-payer")
    page.select_option("select[name=decision]", "rejected")
    page.get_by_role("button", name="Filter").click()
    rows = page.locator("table.audit tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(Verb.APPROVAL_REJECTED)
    expect(rows.first).to_contain_text("sam")
    expect(page.get_by_text("duplicate of CLM-300")).to_have_count(0)

    rows.first.locator(f'a[href="/audit/runs/{run.pk}/"]').click()
    page.wait_for_url(f"**/audit/runs/{run.pk}/")
    chain = page.locator("main")
    expect(chain).to_contain_text("CLM-300")  # the input
    expect(chain).to_contain_text("payments.pay")
    expect(chain).to_contain_text("payouts above 1,000 EUR need a supervisor")  # the rule
    expect(chain).to_contain_text("sam")
    expect(chain).to_contain_text("the invoice is from another policy")  # the reason
    page.go_back()

    with page.expect_download() as download:
        page.get_by_test_id("export").get_by_role("button", name="JSON Lines").click()
    export = tmp_path / "export.jsonl"
    download.value.save_as(export)
    (tmp_path / "key.pem").write_bytes(
        page.request.get(f"{console_server.url}/audit/public-key.pem").body()
    )
    (tmp_path / "verify.py").write_bytes(
        page.request.get(f"{console_server.url}/audit/verifier.py").body()
    )
    done = subprocess.run(
        [sys.executable, "-I", "verify.py", "export.jsonl", "--public-key", "key.pem"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("OK:") and "1 events shown" in done.stdout
    exported = AuditEvent.objects.get(verb=Verb.AUDIT_EXPORTED)
    assert exported.actor_label == "cora"
    assert exported.payload["filter"] == {"agent": "claims-payer", "decision": "rejected"}
