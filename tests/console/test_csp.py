"""The Content-Security-Policy: on every page, strict (no inline script or style, no eval),
and the pages need nothing it forbids."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client

from agents.runtime import execute_run
from agents.services import run_start
from tests.conftest import ALLOW_ALL_TESTS, ROOT

pytestmark = pytest.mark.django_db

INLINE = [
    re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.I),  # a script without src
    re.compile(r"<style\b", re.I),
    re.compile(r"\sstyle=", re.I),
    re.compile(r"\son[a-z]+=", re.I),  # onclick=, onload= …
    re.compile(r"javascript:", re.I),
    re.compile(r"\shx-on", re.I),  # htmx's inline handlers need eval
]


def policy(response: Any) -> dict[str, list[str]]:
    header = response["Content-Security-Policy"]
    directives = [part.split() for part in header.split(";") if part.strip()]
    return {name: values for name, *values in directives}


@pytest.fixture
def pages(make_agent: Any, world: Any) -> list[str]:
    agent = make_agent("counter", "tests.support.agents.counter", ALLOW_ALL_TESTS)
    run = run_start(agent=agent, input={"label": "csp", "steps": 1})
    execute_run(run.pk)
    return [
        "/",
        f"/agents/{agent.slug}/",
        f"/runs/{run.pk}/",
        "/approvals/",
        "/workers/",
        f"/agents/{agent.slug}/kpis/",
        "/kpis/",
    ]


def test_every_page_carries_a_strict_policy(pages: list[str], world: Any) -> None:
    compliance = Client()
    compliance.force_login(world.compliance)
    responses = [Client().get("/login/")]
    responses += [compliance.get(url) for url in [*pages, "/audit/"]]
    for response in responses:
        assert response.status_code == 200
        rules = policy(response)
        assert rules["default-src"] == ["'self'"]
        assert rules["script-src"] == ["'self'"] and rules["style-src"] == ["'self'"]
        assert rules["object-src"] == ["'none'"] and rules["frame-ancestors"] == ["'none'"]
        assert rules["base-uri"] == ["'none'"] and rules["form-action"] == ["'self'"]
        assert "unsafe" not in response["Content-Security-Policy"]


def test_the_pages_have_no_inline_script_or_style(pages: list[str], world: Any) -> None:
    supervisor = Client()
    supervisor.force_login(world.supervisor)
    compliance = Client()
    compliance.force_login(world.compliance)
    rendered = [Client().get("/login/").content.decode()]
    rendered += [supervisor.get(url).content.decode() for url in pages]
    rendered += [compliance.get("/audit/").content.decode()]
    templates = [path.read_text() for path in (ROOT / "templates").rglob("*.html")]
    for text in rendered + templates:
        for pattern in INLINE:
            assert not pattern.search(text), pattern.pattern
    # htmx adds a <style> of its own and evaluates code unless told not to.
    base = (ROOT / "templates" / "base.html").read_text()
    assert '"includeIndicatorStyles": false' in base and '"allowEval": false' in base
