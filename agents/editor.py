"""The policy editor's form (issue 11, point 3): a draft's rules, rate limits, config and
prompt as indexed fields (`rules-0-tool`, `limits-1-per`, …), read back into a policy
with a message next to each field that is wrong.

It works without JavaScript: moving, adding and removing rules and adding a comparison
to a condition are submit buttons (`action`), and the page is drawn again from what was
posted, unsaved. static/js/rules.js adds drag-and-drop and Alt+Arrow keys; both only
rewrite the rules' `order` fields, which this module sorts by, so an action button still
names its rule by the index in its field names.

The condition builder (an argument, an operator and a value) writes the condition
language of agents.conditions through its structured form, and its text is what is
shown, edited and stored (canonical: `amount<=500` is stored as `amount <= 500`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import Group
from django.http import QueryDict

from agents.conditions import COMPARISON_OPERATORS, ConditionError, compile_condition
from agents.drafts import UNKNOWN_GROUP, UNKNOWN_TOOL, groups_missing, tool_known
from agents.models import Agent, AgentVersion
from agents.policy import (
    DEFAULT_ON_TIMEOUT,
    EFFECTS,
    ON_TIMEOUT,
    PolicyError,
    parse_duration,
    parse_policy,
)
from agents.registry import all_tools

MAX_ROWS = 200  # rules, and rate limits: more than any policy needs, few enough to draw
NOTE_LENGTH = 200
REASON_LENGTH = 500
BUILDER_OPERATORS = (*COMPARISON_OPERATORS, "in", "not in")

TOOL_REQUIRED = "name a tool, or a glob like 'payments.*'"
EFFECT_CHOICE = "choose one of " + ", ".join(EFFECTS)
APPROVALS_RANGE = "a whole number from 1 to 5"
ON_TIMEOUT_CHOICE = "choose one of " + ", ".join(ON_TIMEOUT)
ESCALATE_NEEDS_GROUPS = "escalating on timeout needs at least one group to escalate to"
REASON_TOO_LONG = f"at most {REASON_LENGTH} characters"
LIMIT_POSITIVE = "a rate limit is a whole number of at least 1"
PER_REQUIRED = "per how long: seconds, or like '1m', '1h'"
BUILDER_ARG_REQUIRED = "name the argument the comparison is about"
NOT_JSON = "not JSON: {problem} (line {line}, column {column})"
CONFIG_OBJECT = 'the config is a JSON object, like {"model": "scripted"}'
PROMPT_OBJECT = 'the prompt is a JSON object, like {"system": "You pay claims."}'
PROMPT_TWICE = "the prompt has its own field below: take it out of the config"
NOTE_TOO_LONG = f"at most {NOTE_LENGTH} characters"
BAD_ROW_COUNT = "this form is incomplete: reload the page and try again"


@dataclass
class RuleRow:
    """One rule as its fields hold it: text as typed, and the messages next to them."""

    tool: str = ""
    when: str = ""
    effect: str = "allow"
    approvals: str = "1"
    approvers: str = ""
    timeout: str = ""
    on_timeout: str = DEFAULT_ON_TIMEOUT
    escalate_to: str = ""
    reason: str = ""
    # The condition builder's comparison, not yet added to `when`.
    arg: str = ""
    op: str = "=="
    value: str = ""
    source: int = 0  # the index in the posted field names, which action buttons name
    errors: dict[str, str] = field(default_factory=dict)


@dataclass
class LimitRow:
    tool: str = ""
    limit: str = ""
    per: str = ""
    source: int = 0
    errors: dict[str, str] = field(default_factory=dict)


@dataclass
class Draft:
    rules: list[RuleRow]
    limits: list[LimitRow]
    config: str = "{}"
    prompt: str = ""
    note: str = ""
    errors: dict[str, str] = field(default_factory=dict)  # config, prompt, note, form

    @property
    def has_errors(self) -> bool:
        return bool(
            self.errors or any(r.errors for r in self.rules) or any(r.errors for r in self.limits)
        )


@dataclass(frozen=True)
class Content:
    """What a valid draft saves."""

    policy: dict[str, Any]
    config: dict[str, Any]
    note: str


def _json_text(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


def _condition_text(when: Any) -> str:
    try:
        condition = compile_condition(when)
    except ConditionError:
        # A draft stored before this editor checked it: show it as it is, to be fixed.
        return when if isinstance(when, str) else json.dumps(when)
    return "" if condition is None else str(condition)


def draft_from_version(version: AgentVersion) -> Draft:
    """The form as a version fills it."""
    policy = version.policy if isinstance(version.policy, dict) else {}
    rules = []
    for i, raw in enumerate(policy.get("rules") or []):
        raw = raw if isinstance(raw, dict) else {}
        escalate = raw.get("escalate_to", [])
        rules.append(
            RuleRow(
                tool=str(raw.get("tool", "")),
                when=_condition_text(raw.get("when")),
                effect=str(raw.get("effect", "")),
                approvals=str(raw.get("approvals", 1)),
                approvers=str(raw.get("approvers", "")),
                timeout=str(raw.get("timeout", "")),
                on_timeout=str(raw.get("on_timeout", DEFAULT_ON_TIMEOUT)),
                escalate_to=escalate if isinstance(escalate, str) else ", ".join(escalate),
                reason=str(raw.get("reason", "")),
                source=i,
            )
        )
    limits = [
        LimitRow(str(raw.get("tool", "")), str(raw.get("limit", "")), str(raw.get("per", "")), i)
        for i, raw in enumerate(policy.get("rate_limits") or [])
        if isinstance(raw, dict)
    ]
    config = dict(version.config) if isinstance(version.config, dict) else {}
    prompt = config.pop("prompt", None)
    return Draft(
        rules,
        limits,
        config=_json_text(config),
        prompt="" if prompt is None else _json_text(prompt),
        note=version.note,
    )


def _count(data: QueryDict, name: str, draft_errors: dict[str, str]) -> int:
    text = data.get(name, "0")
    if not (text.isascii() and text.isdigit()) or int(text) > MAX_ROWS:
        draft_errors["form"] = BAD_ROW_COUNT
        return 0
    return int(text)


def _order(data: QueryDict, name: str, default: int) -> int:
    text = data.get(name, "")
    return int(text) if text.isascii() and text.isdigit() and len(text) < 6 else default


def draft_from_post(data: QueryDict) -> Draft:
    """The form as it was posted, rules and limits in the order their `order` fields say."""
    errors: dict[str, str] = {}
    rules: list[tuple[int, RuleRow]] = []
    for i in range(_count(data, "rules-count", errors)):
        values: dict[str, Any] = {
            name: data.get(f"rules-{i}-{name}", default)
            for name, default in (
                ("tool", ""),
                ("when", ""),
                ("effect", ""),
                ("approvals", "1"),
                ("approvers", ""),
                ("timeout", ""),
                ("on_timeout", DEFAULT_ON_TIMEOUT),
                ("escalate_to", ""),
                ("reason", ""),
                ("arg", ""),
                ("op", "=="),
                ("value", ""),
            )
        }
        rules.append((_order(data, f"rules-{i}-order", i), RuleRow(**values, source=i)))
    limits: list[tuple[int, LimitRow]] = []
    for i in range(_count(data, "limits-count", errors)):
        row = LimitRow(
            tool=data.get(f"limits-{i}-tool", ""),
            limit=data.get(f"limits-{i}-limit", ""),
            per=data.get(f"limits-{i}-per", ""),
            source=i,
        )
        limits.append((_order(data, f"limits-{i}-order", i), row))
    return Draft(
        [row for _, row in sorted(rules, key=lambda p: (p[0], p[1].source))],
        [row for _, row in sorted(limits, key=lambda p: (p[0], p[1].source))],
        config=data.get("config", ""),
        prompt=data.get("prompt", ""),
        note=data.get("note", ""),
        errors=errors,
    )


_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")
_LITERALS: dict[str, Any] = {"true": True, "false": False, "null": None}


def _builder_scalar(text: str) -> Any:
    """A value as typed in the builder: a number, true/false/null, or text (quotes
    optional)."""
    text = text.strip()
    if text in _LITERALS:
        return _LITERALS[text]
    if _NUMBER.match(text):
        number = Decimal(text)
        return int(number) if number == number.to_integral_value() else float(text)
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def builder_comparison(arg: str, op: str, value: str) -> str:
    """The builder's comparison in the condition language (ConditionError if it is not
    one): `amount`, `<=`, `500` is `amount <= 500`; `in` takes values split by commas."""
    if not arg.strip():
        raise ConditionError(BUILDER_ARG_REQUIRED)
    typed: Any
    if op in ("in", "not in"):
        typed = [_builder_scalar(item) for item in value.split(",") if item.strip()]
    else:
        typed = _builder_scalar(value)
    condition = compile_condition({"arg": arg.strip(), "op": op, "value": typed})
    return str(condition)


def _add_comparison(row: RuleRow) -> None:
    try:
        comparison = builder_comparison(row.arg, row.op, row.value)
    except ConditionError as exc:
        row.errors["arg"] = str(exc)
        return
    text = f"({row.when}) and {comparison}" if row.when.strip() else comparison
    try:
        condition = compile_condition(text)
    except ConditionError as exc:
        row.errors["when"] = str(exc)
        return
    row.when, row.arg, row.op, row.value = str(condition), "", "==", ""


def draft_apply(draft: Draft, action: str) -> bool:
    """Apply a button's action to the form: add, remove, up or down a rule (`up-3`: the
    rule posted as rules-3-…), add-limit, remove-limit, cond (add the builder's
    comparison). False for an action it does not know. Comparisons left in a builder are
    added first, so none typed is lost."""
    for row in draft.rules:
        if row.arg.strip():
            _add_comparison(row)
    verb, _, number = action.rpartition("-") if action[-1:].isdigit() else (action, "", "")
    target = int(number) if number.isdigit() else -1
    rules = [r.source for r in draft.rules]
    limits = [r.source for r in draft.limits]
    if action == "add":
        draft.rules.append(RuleRow(source=-1))
    elif action == "add-limit":
        draft.limits.append(LimitRow(source=-1))
    elif verb in ("up", "down", "remove", "cond") and target in rules:
        at = rules.index(target)
        if verb == "remove":
            draft.rules.pop(at)
        elif verb in ("up", "down"):
            to = at - 1 if verb == "up" else at + 1
            if 0 <= to < len(draft.rules):
                draft.rules.insert(to, draft.rules.pop(at))
    elif verb == "remove-limit" and target in limits:
        draft.limits.pop(limits.index(target))
    else:
        return False
    return True


def _rule(row: RuleRow, missing_groups: set[str]) -> dict[str, Any]:
    """The rule the row says, with a message on each field that is wrong."""
    rule: dict[str, Any] = {"tool": row.tool.strip(), "effect": row.effect}
    if not rule["tool"]:
        row.errors["tool"] = TOOL_REQUIRED
    elif not tool_known(rule["tool"]):
        row.errors["tool"] = UNKNOWN_TOOL.format(tool=rule["tool"])
    try:
        condition = compile_condition(row.when)
    except ConditionError as exc:
        row.errors["when"] = str(exc)
    else:
        if condition is not None:
            rule["when"] = row.when = str(condition)
    if row.effect not in EFFECTS:
        row.errors["effect"] = EFFECT_CHOICE
    if len(row.reason) > REASON_LENGTH:
        row.errors["reason"] = REASON_TOO_LONG
    elif row.reason.strip():
        rule["reason"] = row.reason.strip()
    if row.effect != "approve":
        return rule  # the approval fields mean nothing for other effects
    approvals = row.approvals.strip()
    if approvals.isascii() and approvals.isdigit() and 1 <= int(approvals) <= 5:
        rule["approvals"] = int(approvals)
    else:
        row.errors["approvals"] = APPROVALS_RANGE
    if timeout := row.timeout.strip():
        try:
            parse_duration(timeout, where="timeout")
        except PolicyError as exc:
            row.errors["timeout"] = str(exc).removeprefix("timeout: ")
        rule["timeout"] = int(timeout) if timeout.isdigit() else timeout
    if row.on_timeout not in ON_TIMEOUT:
        row.errors["on_timeout"] = ON_TIMEOUT_CHOICE
    elif row.on_timeout != DEFAULT_ON_TIMEOUT:
        rule["on_timeout"] = row.on_timeout
    if approvers := row.approvers.strip():
        rule["approvers"] = approvers
        if approvers in missing_groups:
            row.errors["approvers"] = UNKNOWN_GROUP.format(group=approvers)
    escalate = _names(row.escalate_to)
    if escalate:
        rule["escalate_to"] = escalate
        if unknown := [g for g in escalate if g in missing_groups]:
            row.errors["escalate_to"] = UNKNOWN_GROUP.format(group=unknown[0])
    elif row.on_timeout == "escalate":
        row.errors["escalate_to"] = ESCALATE_NEEDS_GROUPS
    return rule


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _limit(row: LimitRow) -> dict[str, Any]:
    limit: dict[str, Any] = {"tool": row.tool.strip()}
    if not limit["tool"]:
        row.errors["tool"] = TOOL_REQUIRED
    elif not tool_known(limit["tool"]):
        row.errors["tool"] = UNKNOWN_TOOL.format(tool=limit["tool"])
    count = row.limit.strip()
    if count.isascii() and count.isdigit() and int(count) >= 1:
        limit["limit"] = int(count)
    else:
        row.errors["limit"] = LIMIT_POSITIVE
    per = row.per.strip()
    try:
        parse_duration(per, where="per")
    except PolicyError:
        row.errors["per"] = PER_REQUIRED
    limit["per"] = int(per) if per.isascii() and per.isdigit() else per
    return limit


def _json_object(text: str, *, blank: Any, not_object: str) -> tuple[Any, str]:
    if not text.strip():
        return blank, ""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, NOT_JSON.format(problem=exc.msg, line=exc.lineno, column=exc.colno)
    return (value, "") if isinstance(value, dict) else (None, not_object)


def draft_content(draft: Draft) -> Content | None:
    """What the draft saves, or None with a message next to every field that is wrong."""
    draft_apply(draft, "check")  # add what is left in the builders
    names = [g for row in draft.rules for g in (row.approvers.strip(), *_names(row.escalate_to))]
    missing = set(groups_missing(names))
    rules = [_rule(row, missing) for row in draft.rules]
    limits = [_limit(row) for row in draft.limits]
    config, problem = _json_object(draft.config, blank={}, not_object=CONFIG_OBJECT)
    if problem:
        draft.errors["config"] = problem
    prompt, problem = _json_object(draft.prompt, blank=None, not_object=PROMPT_OBJECT)
    if problem:
        draft.errors["prompt"] = problem
    elif prompt is not None and isinstance(config, dict):
        if "prompt" in config:
            draft.errors["config"] = PROMPT_TWICE
        config["prompt"] = prompt
    if len(draft.note) > NOTE_LENGTH:
        draft.errors["note"] = NOTE_TOO_LONG
    policy: dict[str, Any] = {"rules": rules}
    if limits:
        policy["rate_limits"] = limits
    if draft.has_errors:
        return None
    try:
        parse_policy(policy)  # every field passed; the policy as a whole is checked once more
    except PolicyError as exc:
        draft.errors["form"] = str(exc)
        return None
    return Content(policy, config, draft.note.strip())


def editor_choices(agent: Agent) -> dict[str, list[str]]:
    """What the pickers offer: registered tools and the globs the agent's versions use,
    the argument names of the tools' schemas, and the groups of people."""
    tools = {tool.name for tool in all_tools()}
    for policy in agent.versions.values_list("policy", flat=True):
        if isinstance(policy, dict):
            for raw in [*(policy.get("rules") or []), *(policy.get("rate_limits") or [])]:
                if isinstance(raw, dict) and isinstance(raw.get("tool"), str):
                    tools.add(raw["tool"])
    args = {
        name
        for tool in all_tools()
        for name in (tool.schema.get("properties") or {})
        if isinstance(name, str)
    }
    return {
        "tool_names": sorted(tools),
        "arg_names": sorted(args),
        "group_names": sorted(Group.objects.values_list("name", flat=True)),
        "effects": list(EFFECTS),
        "on_timeouts": list(ON_TIMEOUT),
        "operators": list(BUILDER_OPERATORS),
    }
