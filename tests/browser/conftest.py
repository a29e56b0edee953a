"""Real Chromium for the browser tests. Playwright's sync API keeps an event loop running
in this thread while it is open, so it lives only as long as this package's tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CHROMIUM_ARGS


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the ORM calls the tests make
    # beside it are still plain synchronous code. Only this process gets the exemption.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    executable = os.environ.get("BATON_CHROMIUM", "/usr/bin/chromium")
    if not Path(executable).exists():
        pytest.exit(
            f"Chromium is missing at {executable}: apt-get install -y chromium "
            "(make test installs it)",
            returncode=3,
        )
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    yield context.new_page()
    context.close()
