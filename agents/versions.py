"""Two versions of an agent side by side: the diff (issue 11, point 3).

Rules are compared as the gateway reads them (agents.policy.policy_of), so a condition
written another way with the same meaning (`amount<=500` and `amount <= 500`) is not a
change. Rules are paired by their tool glob, the k-th rule of a tool in one version with
the k-th of that tool in the other, so a rule inserted above the others shifts them
without marking them changed; rules left over at the same place in both lists are paired
by position, and their tool is what changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.http import Http404

from agents.models import Agent, AgentVersion
from agents.policy import RateLimit, Rule, policy_of

ADDED, REMOVED, CHANGED, SAME = "added", "removed", "changed", "same"
NO_SUCH_VERSION = "No such version."


def rule_fields(rule: Rule) -> dict[str, Any]:
    """A rule's fields as people read them; the approval fields only where the rule holds
    for approval (elsewhere they mean nothing)."""
    fields: dict[str, Any] = {
        "tool": rule.tool,
        "condition": "" if rule.condition is None else str(rule.condition),
        "effect": rule.effect,
    }
    if rule.effect == "approve":
        fields.update(
            {
                "approvals": rule.approvals,
                "timeout": duration(rule.timeout_seconds),
                "on timeout": rule.on_timeout,
            }
        )
        if rule.approvers:
            fields["approver group"] = rule.approvers
        if rule.escalate_to:
            fields["escalate to"] = ", ".join(rule.escalate_to)
    fields["reason"] = rule.reason
    return fields


@dataclass(frozen=True, slots=True)
class Side:
    position: int  # 1-based, as people count rules
    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the side-by-side: a rule of a, of b, or of both."""

    status: str  # added, removed, changed or same
    a: Side | None
    b: Side | None
    changed: tuple[str, ...] = ()

    @property
    def moved(self) -> bool:
        return self.a is not None and self.b is not None and self.a.position != self.b.position


@dataclass(frozen=True, slots=True)
class ValueRow:
    """A rate limit (keyed by its tool glob) or a config key, in a and in b."""

    key: str
    status: str
    a: Any
    b: Any


@dataclass(frozen=True, slots=True)
class VersionDiff:
    a: AgentVersion
    b: AgentVersion
    rules: list[Row]
    rate_limits: list[ValueRow]
    config: list[ValueRow]
    program: tuple[str, str] | None  # (a, b) when the program differs

    @property
    def identical(self) -> bool:
        values = (*self.rate_limits, *self.config)
        return (
            self.program is None
            and all(row.status == SAME for row in self.rules)
            and all(row.status == SAME for row in values)
        )


def _pair(a: Side, b: Side) -> Row:
    keys = list(dict.fromkeys([*a.fields, *b.fields]))
    changed = tuple(k for k in keys if a.fields.get(k) != b.fields.get(k))
    return Row(CHANGED if changed else SAME, a, b, changed)


def _rule_rows(a: tuple[Rule, ...], b: tuple[Rule, ...]) -> list[Row]:
    sides_a = [Side(r.index + 1, rule_fields(r)) for r in a]
    sides_b = [Side(r.index + 1, rule_fields(r)) for r in b]
    partner: dict[int, int] = {}  # index in a -> index in b
    # The k-th rule of a tool in a is the k-th rule of that tool in b...
    for tool in dict.fromkeys(r.tool for r in a):
        olds = [r.index for r in a if r.tool == tool]
        news = [r.index for r in b if r.tool == tool]
        partner.update(zip(olds, news, strict=False))
    # ...and what is left at one place in both lists is one rule whose tool changed.
    taken = set(partner.values())
    for i in range(min(len(a), len(b))):
        if i not in partner and i not in taken:
            partner[i] = i
            taken.add(i)
    # Rows in b's order; a removed rule right after the row of the rule above it in a.
    rows: list[tuple[tuple[int, int, int], Row]] = [
        ((j, 0, 0), Row(ADDED, None, sides_b[j])) for j in range(len(b)) if j not in taken
    ]
    above = -1
    for i, side in enumerate(sides_a):
        if i in partner:
            above = partner[i]
            rows.append(((above, 0, 0), _pair(side, sides_b[above])))
        else:
            rows.append(((above, 1, i), Row(REMOVED, side, None)))
    return [row for _, row in sorted(rows, key=lambda item: item[0])]


def duration(seconds: int) -> str:
    """4h, 30m, 90s: a timeout as a policy writes it."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _limit(limit: RateLimit) -> str:
    return f"{limit.limit} per {duration(limit.per)}"


def _value_rows(a: dict[str, Any], b: dict[str, Any]) -> list[ValueRow]:
    rows = []
    for key in dict.fromkeys([*a, *b]):
        if key not in b:
            rows.append(ValueRow(key, REMOVED, a[key], None))
        elif key not in a:
            rows.append(ValueRow(key, ADDED, None, b[key]))
        else:
            rows.append(ValueRow(key, SAME if a[key] == b[key] else CHANGED, a[key], b[key]))
    return rows


def version_diff(a: AgentVersion, b: AgentVersion) -> VersionDiff:
    """What changed from version a to version b: rules, rate limits, config (the prompt is
    part of it), program."""
    policy_a, policy_b = policy_of(a), policy_of(b)
    limits_a = {lim.tool: _limit(lim) for lim in policy_a.rate_limits}
    limits_b = {lim.tool: _limit(lim) for lim in policy_b.rate_limits}
    config_a = a.config if isinstance(a.config, dict) else {"": a.config}
    config_b = b.config if isinstance(b.config, dict) else {"": b.config}
    return VersionDiff(
        a,
        b,
        _rule_rows(policy_a.rules, policy_b.rules),
        _value_rows(limits_a, limits_b),
        _value_rows(config_a, config_b),
        None if a.program == b.program else (a.program, b.program),
    )


def version_of(agent: Agent, number: object) -> AgentVersion:
    """The agent's version by its number (as typed in a URL or a form); 404 otherwise."""
    text = str(number)
    if not (text.isascii() and text.isdigit() and len(text) <= 9):
        raise Http404(NO_SUCH_VERSION)
    version = agent.versions.select_related("author").filter(number=int(text)).first()
    if version is None:
        raise Http404(NO_SUCH_VERSION)
    return version
