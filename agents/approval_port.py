"""How the gateway reaches the approvals app without importing it (STYLE.md, "Layers").

`agents` sits below `approvals`: the gateway holds a step for people and a cancelled run
withdraws its requests, but the requests are the approvals app's. The approvals app
registers its implementation when Django starts (`approvals.apps`); the gateway calls it
directly, inside its own transaction — a plain call, not a signal, so a failure rolls the
step back with everything else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from agents.models import Action
    from agents.policy import Rule
    from agents.registry import Tool
    from audit.services import Actor

NOT_REGISTERED = "no approvals implementation is registered: is 'approvals' in INSTALLED_APPS?"


class ApprovalPort(Protocol):
    def open(self, *, action: Action, tool: Tool, rule: Rule | None) -> object:
        """Open a request for people to decide on a held step (inside the caller's
        transaction, after the run's row and the action's are written)."""

    def cancel_for_runs(self, *, run_ids: list[int], reason: str, actor: Actor) -> None:
        """Withdraw the pending requests of runs the caller holds locked."""


_registered: ApprovalPort | None = None


def register(port: ApprovalPort) -> None:
    global _registered
    _registered = port


def approvals() -> ApprovalPort:
    if _registered is None:
        raise RuntimeError(NOT_REGISTERED)
    return _registered
