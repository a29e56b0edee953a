"""The templates' own source never reaches a page."""

from __future__ import annotations

from tests.conftest import ROOT


def test_every_template_comment_closes_on_its_own_line() -> None:
    # Django's {# … #} is one line only: one that runs on is sent as text, and a browser
    # shows it at the top of the page. Longer comments use {% comment %}.
    unclosed = []
    for template in sorted((ROOT / "templates").rglob("*.html")):
        for number, line in enumerate(template.read_text().splitlines(), 1):
            if line.count("{#") != line.count("#}"):
                unclosed.append(f"{template.relative_to(ROOT)}:{number}")
    assert unclosed == []
