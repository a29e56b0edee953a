"""Structured logs: with BATON_LOG_JSON=true every log line is one JSON object (structlog),
carrying the ids bound where the work happens — `request_id` by RequestIdMiddleware for
a web request, `run_id` and `agent_id` by the runtime around a run's execution
(structlog.contextvars, so every line logged inside, by any module, has them).

Baton's modules keep logging through the standard library; structlog only formats.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import TYPE_CHECKING, Any

import structlog
from asgiref.sync import iscoroutinefunction, markcoroutinefunction

if TYPE_CHECKING:  # the settings module imports this one: no request machinery at import
    from django.http import HttpRequest, HttpResponse

log = logging.getLogger("console.requests")

# What structlog adds to a standard-library record before it is rendered as JSON.
PRE_CHAIN: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_logger_name,
    structlog.stdlib.add_log_level,
    structlog.stdlib.ExtraAdder(),
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def json_formatter() -> logging.Formatter:
    """One JSON object a line: the message as `event`, level, logger, UTC timestamp, the
    record's extras and whatever ids are bound (request_id, run_id, agent_id, agent)."""
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=PRE_CHAIN,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
    )


def logging_config(*, json_lines: bool, level: str) -> dict[str, Any]:
    """settings.LOGGING: plain lines for a person at a terminal, or JSON lines."""
    formatters: dict[str, Any] = {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        "json": {"()": json_formatter},
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": formatters,
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": "json" if json_lines else "plain",
            }
        },
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            "django.db.backends": {"level": "INFO"},
            # django-axes says INFO for every start and every failed login; its warnings
            # (a failure, a lock-out) are the lines worth reading.
            "axes": {"level": "WARNING"},
            # One line per request, for JSON logs (uvicorn's access log has no request id);
            # a terminal has uvicorn's.
            "console.requests": {"level": "INFO" if json_lines else "WARNING"},
        },
    }


# A request id from a proxy in front is kept when it looks like one; otherwise a new one.
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def request_id(request: HttpRequest) -> str:
    given = request.headers.get("X-Request-ID", "")
    return given if REQUEST_ID.match(given) else uuid.uuid4().hex


class RequestIdMiddleware:
    """Binds `request_id` for every line logged while a request is served, answers it in
    `X-Request-ID`, and logs the request's outcome."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self._acall(request)
        rid, start = request_id(request), time.monotonic()
        with structlog.contextvars.bound_contextvars(request_id=rid):
            response = self.get_response(request)
            _done(request, response, rid, start)
        return response

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        rid, start = request_id(request), time.monotonic()
        with structlog.contextvars.bound_contextvars(request_id=rid):
            response = await self.get_response(request)
            _done(request, response, rid, start)
        return response  # type: ignore[no-any-return]


def _done(request: HttpRequest, response: HttpResponse, rid: str, start: float) -> None:
    response["X-Request-ID"] = rid
    log.info(
        "%s %s %s",
        request.method,
        request.path,
        response.status_code,
        extra={
            "method": request.method,
            "path": request.path,
            "status": response.status_code,
            "duration_ms": round((time.monotonic() - start) * 1000, 1),
        },
    )
