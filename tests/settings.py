"""The suite's settings: console.settings on a developer machine's services, so plain
`python -m pytest` runs (pyproject's DJANGO_SETTINGS_MODULE names this module).

Each default is taken only where the environment does not say otherwise, so `make test`
and CI keep theirs. They go into os.environ, not only into settings: the workers and
servers the suite starts (tests/conftest.py `child_env`) inherit them and load
console.settings itself.
"""

from __future__ import annotations

import os
import sys

DEFAULTS = {
    # Makefile's TEST_DATABASE_URL and TEST_REDIS_URL: the services README "Tests" starts.
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/test",
    "REDIS_URL": "redis://127.0.0.1:6379/15",
    # Plain HTTP on this machine, with a key that signs nothing outside a test run.
    "BATON_HTTPS": "false",
    "SECRET_KEY": "pytest-only-secret-key-never-used-outside-the-test-suite",
    # The demo and the test agents the suite runs (tests/support/agents.py).
    "BATON_AGENT_MODULES": "agents.demo,tests.support.agents",
    # Workers' mail stays in memory too (pytest-django sets it for this process only).
    "EMAIL_BACKEND": "django.core.mail.backends.locmem.EmailBackend",
    "BATON_CHROMIUM": "/usr/bin/chromium",
    # The MCP tests' upstream servers are Python scripts (tests/support/mcp_upstream.py).
    "BATON_MCP_STDIO_COMMANDS": sys.executable,
    # Tests read the trail in the transaction that wrote it: each writer chains its own
    # events. tests/audit/test_sequencer.py runs the sequencer itself, in its own processes.
    "BATON_AUDIT_SEQUENCING": "inline",
}

# The store contract's second run (tests/agents/test_store_contract.py) is on the
# embedded default's SQLite: no database URL there.
if os.environ.get("BATON_TEST_CONTRACT_ON") == "sqlite":
    del DEFAULTS["DATABASE_URL"]

for name, value in DEFAULTS.items():
    os.environ.setdefault(name, value)

from console.settings import *  # noqa: E402, F403
