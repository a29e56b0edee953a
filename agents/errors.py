"""What the gateway tells an agent program.

Exceptions an agent may catch and adapt to derive from Exception. Control flow the
gateway owns (suspend, delay, stop) derives from BaseException, so a program's
`except Exception` cannot swallow a kill switch or an approval wait.
"""

from __future__ import annotations

import kombu.exceptions
import redis.exceptions
from django import db


class ActionError(Exception):
    """A step did not run or did not succeed; the agent may handle it."""

    def __init__(self, tool: str, reason: str) -> None:
        super().__init__(f"{tool}: {reason}")
        self.tool = tool
        self.reason = reason


class PolicyDenied(ActionError):
    pass


class ArgumentsInvalid(PolicyDenied):
    pass


class ActionRejected(ActionError):
    """A person rejected the held action; `reason` is what they wrote."""


class ToolFailed(ActionError):
    pass


class GatewayStop(BaseException):  # noqa: N818  (control flow, not an error)
    pass


class Suspended(GatewayStop):
    """The run waits for people; the task ends and holds no worker slot."""


class Delayed(GatewayStop):
    def __init__(self, countdown: float, reason: str) -> None:
        super().__init__(reason)
        self.countdown = countdown
        self.reason = reason


class Stopped(GatewayStop):
    """A kill switch or a cancel covers the run. mode: 'pause', 'halt' or 'cancel'."""

    def __init__(self, mode: str, reason: str) -> None:
        super().__init__(reason)
        self.mode = mode
        self.reason = reason


class LeaseLost(GatewayStop):
    """Another worker owns the run now; this one must stop touching it."""


class Divergence(GatewayStop):
    """The program asked for something other than its journal holds: not deterministic."""


# Faults of the infrastructure, not of the agent: a deadlock or serialization failure, a
# dropped or refused database connection, an unreachable Redis or broker. They pass; the
# run is retried with back-off (the journal makes that safe) and never fails for them.
TRANSIENT_FAULTS: tuple[type[Exception], ...] = (
    db.OperationalError,
    db.InterfaceError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    kombu.exceptions.OperationalError,
)


def transient_backoff(attempt: int) -> float:
    """Seconds before attempt `attempt + 1` after a transient fault: 0.5, 1, 2 … 30."""
    return float(min(0.5 * 2 ** max(attempt - 1, 0), 30.0))
