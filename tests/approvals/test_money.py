"""Money is shown one way everywhere (the `money` filter): with its currency, at least two
decimals, and in bounded size whatever the amount — `1e5000000` written out is five
million digits."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from agents.models import Run
from agents.runtime import execute_run
from agents.services import run_start
from approvals.models import ApprovalRequest

pytestmark = pytest.mark.django_db

PAGE_LIMIT = 200_000  # bytes


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def request_(payer: Any) -> ApprovalRequest:
    """A held payout of 1354.0 whose run also carries an absurd total and, in its output,
    an amount in another currency."""
    run = run_start(agent=payer, input={"claim_id": "c1", "amount": 1354.0, "total": "1e5000000"})
    execute_run(run.pk)
    Run.objects.filter(pk=run.pk).update(output={"amount": 12.5, "currency": "USD"})
    return ApprovalRequest.objects.get(run=run)


def pages(world: Any, request: ApprovalRequest) -> dict[str, str]:
    client = client_for(world.supervisor)
    shown = {}
    for name, url in {
        "queue": "/approvals/",
        "request": f"/approvals/{request.pk}/",
        "run": f"/runs/{request.run_id}/",
        "chain": f"/audit/runs/{request.run_id}/",
    }.items():
        response = client.get(url)
        assert response.status_code == 200, name
        assert len(response.content) < PAGE_LIMIT, name
        shown[name] = response.content.decode()
    return shown


def test_an_amount_is_shown_with_its_currency_and_two_decimals_everywhere(
    world: Any, request_: ApprovalRequest
) -> None:
    shown = pages(world, request_)
    for name in ("queue", "request", "run", "chain"):
        assert "1,354.00 EUR" in shown[name], name
        assert "1354.0<" not in shown[name] and "1354.0 " not in shown[name], name
    assert "12.50 USD" not in shown["queue"]


def test_the_edit_field_starts_from_the_amount_with_two_decimals_and_its_currency(
    world: Any, request_: ApprovalRequest
) -> None:
    page = pages(world, request_)["request"]
    assert 'name="arg:amount" value="1354.00"' in page
    assert '<span class="muted">EUR</span>' in page


def test_a_run_output_shows_the_currency_beside_its_amount(
    world: Any, request_: ApprovalRequest
) -> None:
    assert "12.50 USD" in pages(world, request_)["run"]


def test_an_absurd_amount_is_shown_in_bounded_size(world: Any, request_: ApprovalRequest) -> None:
    shown = pages(world, request_)
    for name in ("request", "run", "chain"):
        assert "1.000E+5000000 EUR" in shown[name], name
