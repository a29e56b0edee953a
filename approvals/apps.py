from __future__ import annotations

from django.apps import AppConfig


class ApprovalsConfig(AppConfig):
    name = "approvals"

    def ready(self) -> None:
        # The gateway (a lower layer) opens and withdraws requests through this port.
        from agents import approval_port
        from approvals import checks, services  # noqa: F401 - checks registers itself

        approval_port.register(services.Port())
