"""The client's exceptions: one per stable `code` of the API's error answers, so an agent
branches on the type, never on the text; and the outcomes of a governed call that are not
a result (denied, rejected, still pending)."""

from __future__ import annotations

from typing import Any


class BatonError(Exception):
    """Anything the client raises on purpose."""


class ApiError(BatonError):
    """An error answer of the API: its HTTP status, its stable `code` and its text."""

    def __init__(self, status: int, code: str, message: str, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.body = body


class BadRequest(ApiError):
    """400 (`bad_json`, `bad_field`, `unstorable`, `refused`), 413 or 415: the request is
    wrong and sending it again will not help. `field` is the field the message names."""

    @property
    def field(self) -> str | None:
        head, sep, _ = self.message.partition(": ")
        if not sep or " " in head or not head:
            return None
        return head


class Unauthorized(ApiError):
    """401: no key, or a wrong, revoked or expired one."""


class NotFound(ApiError):
    """404: no such run or step for this agent."""


class Conflict(ApiError):
    """409: the run or step is not in a state that allows it (a step out of order, the same
    step number for another call, a run that is over)."""


class Stopped(ApiError):
    """423: a kill switch covers the agent; nothing was journaled."""

    def __init__(self, status: int, code: str, message: str, body: Any = None) -> None:
        super().__init__(status, code, message, body)
        details = body if isinstance(body, dict) else {}
        self.seq: int | None = details.get("seq")
        self.reason: str = details.get("reason") or message


class Paused(Stopped):
    """423 `paused`: the agent is paused; ask again once people resume it."""


class Halted(Stopped):
    """423 `halted`: the agent is halted; this run will not go on."""


class RateLimited(ApiError):
    """429: a rate limit of the policy; nothing was journaled. The client waits
    `retry_after` seconds and asks again by itself, up to its configured bound; this is
    raised past that bound."""

    def __init__(
        self, status: int, code: str, message: str, body: Any = None, retry_after: float = 1.0
    ) -> None:
        super().__init__(status, code, message, body)
        self.retry_after = retry_after


class ServerError(ApiError):
    """5xx: Baton failed (it logs the trace). Idempotent calls were already retried."""


class ConnectionFailed(BatonError):
    """Baton could not be reached, or the answer was lost, after the retries allowed."""


class Denied(BatonError):
    """A governed call the policy denied (or found invalid): the function was not called."""

    def __init__(self, tool: str, seq: int, reason: str) -> None:
        super().__init__(f"{tool} (step {seq}) denied: {reason}")
        self.tool = tool
        self.seq = seq
        self.reason = reason


class Rejected(BatonError):
    """A governed call people rejected (or whose approval timed out): not called."""

    def __init__(self, tool: str, seq: int, reason: str) -> None:
        super().__init__(f"{tool} (step {seq}) rejected: {reason}")
        self.tool = tool
        self.seq = seq
        self.reason = reason


class StillPending(BatonError):
    """A governed call still waiting for people when the client stopped waiting. The step
    stays held; the same session (or a resumed one) can wait for it again."""

    def __init__(self, tool: str, seq: int, waited: float) -> None:
        super().__init__(f"{tool} (step {seq}) still awaits approval after {waited:g} s")
        self.tool = tool
        self.seq = seq


class StepFailed(BatonError):
    """A replayed step whose function failed the first time: the journal holds its error."""

    def __init__(self, tool: str, seq: int, error: str) -> None:
        super().__init__(f"{tool} (step {seq}) failed before: {error}")
        self.tool = tool
        self.seq = seq
        self.error = error


BY_CODE: dict[str, type[ApiError]] = {
    "bad_json": BadRequest,
    "bad_field": BadRequest,
    "unstorable": BadRequest,
    "refused": BadRequest,
    "body_too_large": BadRequest,
    "unsupported_media_type": BadRequest,
    "unauthorized": Unauthorized,
    "not_found": NotFound,
    "conflict": Conflict,
    "paused": Paused,
    "halted": Halted,
    "rate_limited": RateLimited,
    "internal_error": ServerError,
}
BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    404: NotFound,
    409: Conflict,
    413: BadRequest,
    415: BadRequest,
    429: RateLimited,
}
