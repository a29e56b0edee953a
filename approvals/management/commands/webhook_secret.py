"""Print a new BATON_WEBHOOK_SECRET: `whsec_` and 32 random bytes in base64, the form
Standard Webhooks libraries take to verify Baton's webhooks."""

from __future__ import annotations

import base64
import secrets
from typing import Any

from django.core.management.base import BaseCommand

from approvals.notifications import SECRET_PREFIX


class Command(BaseCommand):
    help = "Print a new webhook signing secret for BATON_WEBHOOK_SECRET (and the receivers)."

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode())
