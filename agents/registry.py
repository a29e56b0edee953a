"""Tools and agent programs, registered in code.

A tool is an action an agent can take: a name (`payments.pay`), a JSON schema for its
arguments, a risk level, whether a retry with the same idempotency key is safe, and
optionally `simulate`, used in shadow mode instead of the real thing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.db import models
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError


class Risk(models.TextChoices):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


@dataclass(frozen=True)
class ToolCall:
    args: dict[str, Any]
    idempotency_key: str
    run_id: int
    agent_slug: str


@dataclass(frozen=True)
class Tool:
    name: str
    schema: dict[str, Any]
    fn: Callable[[ToolCall], Any]
    risk: str = Risk.LOW
    idempotent: bool = False
    simulate: Callable[[ToolCall], Any] | None = None
    description: str = ""
    validator: Draft202012Validator = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        Draft202012Validator.check_schema(self.schema)
        object.__setattr__(self, "validator", Draft202012Validator(self.schema))

    def argument_errors(self, args: dict[str, Any]) -> list[str]:
        """Every way `args` breaks the schema, each naming the field it is about."""
        errors = sorted(self.validator.iter_errors(args), key=lambda e: list(e.path))
        return [f"{'.'.join(str(p) for p in e.path) or 'arguments'}: {e.message}" for e in errors]


_TOOLS: dict[str, Tool] = {}
_PROGRAMS: dict[str, Callable[..., Any]] = {}


class UnknownTool(LookupError):
    pass


class UnknownProgram(LookupError):
    pass


def tool(
    name: str,
    *,
    schema: dict[str, Any],
    risk: str = Risk.LOW,
    idempotent: bool = False,
    simulate: Callable[[ToolCall], Any] | None = None,
    description: str = "",
) -> Callable[[Callable[[ToolCall], Any]], Callable[[ToolCall], Any]]:
    def register(fn: Callable[[ToolCall], Any]) -> Callable[[ToolCall], Any]:
        try:
            registered = Tool(
                name=name,
                schema=schema,
                fn=fn,
                risk=risk,
                idempotent=idempotent,
                simulate=simulate,
                description=description or (fn.__doc__ or "").strip(),
            )
        except SchemaError as exc:
            raise ValueError(f"tool {name}: invalid argument schema: {exc.message}") from exc
        _TOOLS[name] = registered
        return fn

    return register


# Tools that are not Baton's code (an agent's upstream MCP servers, agents.mcp): each
# source answers a name it knows, else None. Registered code always comes first.
_SOURCES: list[Callable[[str], Tool | None]] = []


def tool_source(source: Callable[[str], Tool | None]) -> None:
    if source not in _SOURCES:
        _SOURCES.append(source)


def get_tool(name: str) -> Tool:
    try:
        return _TOOLS[name]
    except KeyError:
        for source in _SOURCES:
            found = source(name)
            if found is not None:
                return found
        raise UnknownTool(f"no tool named {name!r} is registered") from None


def all_tools() -> list[Tool]:
    return sorted(_TOOLS.values(), key=lambda t: t.name)


def program(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Register a hosted agent program under its dotted path."""
    _PROGRAMS[f"{fn.__module__}.{fn.__qualname__}"] = fn
    return fn


def get_program(path: str) -> Callable[..., Any]:
    # Only registered programs run: an agent version names code, it never imports it.
    try:
        return _PROGRAMS[path]
    except KeyError:
        raise UnknownProgram(f"no agent program {path!r} is registered") from None


def all_programs() -> list[str]:
    return sorted(_PROGRAMS)
