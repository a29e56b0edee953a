"""What a governed call does, apart from talking to Baton (the sessions do that, sync or
async): the function's arguments as the step's `args`, and the step's decision turned into
a call of the function, a value, or an exception."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from typing import Any

from agents.client.errors import Denied, Rejected, StepFailed, StillPending
from agents.client.types import Step

RUN = object()  # the decision says: call the function now


def call_args(
    signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """The call's arguments by name, defaults included: the step's `args`. Keyword
    arguments gathered by `**kwargs` are flattened in, as the tool sees them."""
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    named: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            named.update(value)
        elif signature.parameters[name].kind is inspect.Parameter.VAR_POSITIONAL:
            named[name] = list(value)
        else:
            named[name] = value
    return named


def from_args(
    signature: inspect.Signature, named: dict[str, Any]
) -> tuple[list[Any], dict[str, Any]]:
    """The positional and keyword arguments to call the function with `named`, the step's
    args as Baton returned them (a person may have edited them)."""
    rest = dict(named)
    positional: list[Any] = []
    keywords: dict[str, Any] = {}
    for name, parameter in signature.parameters.items():
        if name not in rest:
            continue
        if parameter.kind is inspect.Parameter.POSITIONAL_ONLY:
            positional.append(rest.pop(name))
        elif parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            positional.extend(rest.pop(name))
        elif parameter.kind is not inspect.Parameter.VAR_KEYWORD:
            keywords[name] = rest.pop(name)
    keywords.update(rest)  # what `**kwargs` gathered (or a name the function refuses)
    return positional, keywords


def settle(step: Step, tool: str, waited: float) -> Any:
    """The value of a governed call the function need not be called for, or RUN; or the
    exception its decision stands for."""
    match step.decision:
        case "allow":
            return RUN
        case "shadow":
            return step.result
        case "done":  # a replayed step: its function ran before
            if step.status == "failed":
                raise StepFailed(tool, step.seq, step.error)
            return step.result
        case "deny":
            raise Denied(tool, step.seq, step.reason)
        case "rejected":
            raise Rejected(tool, step.seq, step.reason)
    raise StillPending(tool, step.seq, waited)


def reportable(value: Any) -> Any:
    """The function's result as JSON for the journal; what JSON cannot say is its text."""
    return json.loads(json.dumps(value, default=str))


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]


def signature_of(fn: Callable[..., Any]) -> inspect.Signature:
    return inspect.signature(fn)
