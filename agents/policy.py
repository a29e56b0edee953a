"""Policies: ordered rules, first match wins, default deny (DESIGN section 3).

A policy is JSON kept on the agent version:

    {"rules": [{"tool": "payments.pay", "when": "amount <= 1000", "effect": "allow"},
               {"tool": "payments.pay", "effect": "approve", "approvals": 2,
                "timeout": "4h", "on_timeout": "reject"},
               {"tool": "email.*", "effect": "shadow"}],
     "rate_limits": [{"tool": "purchasing.*", "limit": 5, "per": 60}]}

`tool` is a glob over tool names; `when` a condition over the arguments (agents.conditions:
an expression or its structured form, never eval).
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from agents.conditions import Condition, ConditionError, compile_condition

if TYPE_CHECKING:
    from agents.models import AgentVersion

EFFECTS = ("allow", "deny", "approve", "shadow")
ON_TIMEOUT = ("reject", "escalate")
DEFAULT_APPROVAL_TIMEOUT = 4 * 3600
# The approval defaults, written here once: a rule that names no timeout or no
# on_timeout gets these; a request no rule opened (an action whose outcome is unknown)
# waits UNKNOWN_OUTCOME_TIMEOUT and is rejected after it (approvals.services).
UNKNOWN_OUTCOME_TIMEOUT = 24 * 3600
DEFAULT_ON_TIMEOUT = "reject"
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_RULE_KEYS = {
    "tool",
    "when",
    "effect",
    "approvals",
    "timeout",
    "on_timeout",
    "escalate_to",
    "approvers",
    "reason",
}
_LIMIT_KEYS = {"tool", "limit", "per"}


class PolicyError(ValueError):
    pass


def parse_duration(value: object, *, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = _DURATION.match(value) if isinstance(value, str) else None
    if not match or int(match.group(1)) <= 0:
        raise PolicyError(f"{where}: a duration is a positive number of s, m, h or d, like '4h'")
    return int(match.group(1)) * _UNITS[match.group(2)]


@dataclass(frozen=True)
class Rule:
    index: int
    tool: str
    condition: Condition | None
    effect: str
    approvals: int
    timeout_seconds: int
    on_timeout: str
    reason: str
    escalate_to: tuple[str, ...] = ()
    # The approver group: when set, only the agent's supervisors in this group decide.
    approvers: str = ""

    def matches(self, tool: str, args: dict[str, Any]) -> bool:
        if not fnmatch.fnmatchcase(tool, self.tool):
            return False
        return self.condition is None or self.condition.evaluate(args)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "tool": self.tool, "effect": self.effect}
        if self.condition is not None:
            out["when"] = str(self.condition)
        if self.effect == "approve":
            out.update(
                approvals=self.approvals, timeout=self.timeout_seconds, on_timeout=self.on_timeout
            )
            if self.escalate_to:
                out["escalate_to"] = list(self.escalate_to)
            if self.approvers:
                out["approvers"] = self.approvers
        if self.reason:
            out["reason"] = self.reason
        return out


@dataclass(frozen=True)
class RateLimit:
    tool: str
    limit: int
    per: int


@dataclass(frozen=True)
class Verdict:
    effect: str
    rule: Rule | None

    @property
    def reason(self) -> str:
        if self.rule is None:
            return "no rule matched: denied by default"
        return self.rule.reason or f"rule {self.rule.index + 1} ({self.rule.tool}): {self.effect}"


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...]
    rate_limits: tuple[RateLimit, ...]

    def decide(self, tool: str, args: dict[str, Any]) -> Verdict:
        for rule in self.rules:
            if rule.matches(tool, args):
                return Verdict(rule.effect, rule)
        return Verdict("deny", None)

    def rate_limit_for(self, tool: str) -> RateLimit | None:
        for limit in self.rate_limits:
            if fnmatch.fnmatchcase(tool, limit.tool):
                return limit
        return None


def _parse_rule(index: int, raw: object) -> Rule:
    where = f"rule {index + 1}"
    if not isinstance(raw, dict):
        raise PolicyError(f"{where}: a rule is an object")
    unknown = set(raw) - _RULE_KEYS
    if unknown:
        raise PolicyError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    tool = raw.get("tool")
    if not isinstance(tool, str) or not tool.strip():
        raise PolicyError(f"{where}: 'tool' names a tool or a glob like 'payments.*'")
    effect = raw.get("effect")
    if effect not in EFFECTS:
        raise PolicyError(f"{where}: 'effect' is one of {', '.join(EFFECTS)}")
    try:
        condition = compile_condition(raw.get("when"))
    except ConditionError as exc:
        raise PolicyError(f"{where}: condition: {exc}") from exc
    approvals = raw.get("approvals", 1)
    if not isinstance(approvals, int) or isinstance(approvals, bool) or not 1 <= approvals <= 5:
        raise PolicyError(f"{where}: 'approvals' is a whole number from 1 to 5")
    on_timeout = raw.get("on_timeout", DEFAULT_ON_TIMEOUT)
    if on_timeout not in ON_TIMEOUT:
        raise PolicyError(f"{where}: 'on_timeout' is one of {', '.join(ON_TIMEOUT)}")
    timeout = parse_duration(raw.get("timeout", DEFAULT_APPROVAL_TIMEOUT), where=where)
    reason = raw.get("reason", "")
    if not isinstance(reason, str):
        raise PolicyError(f"{where}: 'reason' is text")
    escalate_to = raw.get("escalate_to", [])
    if isinstance(escalate_to, str):
        escalate_to = [escalate_to]
    if not isinstance(escalate_to, list) or not all(
        isinstance(g, str) and g.strip() for g in escalate_to
    ):
        raise PolicyError(f"{where}: 'escalate_to' names approver groups")
    if on_timeout == "escalate" and not escalate_to:
        raise PolicyError(f"{where}: 'on_timeout': 'escalate' needs 'escalate_to' groups")
    approvers = raw.get("approvers", "")
    if not isinstance(approvers, str) or len(approvers) > 150:
        raise PolicyError(f"{where}: 'approvers' names one approver group")
    return Rule(
        index,
        tool.strip(),
        condition,
        effect,
        approvals,
        timeout,
        on_timeout,
        reason,
        tuple(g.strip() for g in escalate_to),
        approvers.strip(),
    )


def _parse_limit(index: int, raw: object) -> RateLimit:
    where = f"rate limit {index + 1}"
    if not isinstance(raw, dict) or set(raw) - _LIMIT_KEYS:
        raise PolicyError(f"{where}: an object with 'tool', 'limit' and 'per'")
    tool, limit = raw.get("tool"), raw.get("limit")
    if not isinstance(tool, str) or not tool.strip():
        raise PolicyError(f"{where}: 'tool' names a tool or a glob")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise PolicyError(f"{where}: 'limit' is a whole number of at least 1")
    return RateLimit(tool.strip(), limit, parse_duration(raw.get("per"), where=where))


def parse_policy(data: object) -> Policy:
    if data in (None, {}):
        return Policy((), ())
    if not isinstance(data, dict) or set(data) - {"rules", "rate_limits"}:
        raise PolicyError("a policy is an object with 'rules' and optionally 'rate_limits'")
    rules, limits = data.get("rules", []), data.get("rate_limits", [])
    if not isinstance(rules, list) or not isinstance(limits, list):
        raise PolicyError("'rules' and 'rate_limits' are lists")
    return Policy(
        tuple(_parse_rule(i, r) for i, r in enumerate(rules)),
        tuple(_parse_limit(i, r) for i, r in enumerate(limits)),
    )


def policy_of(version: AgentVersion) -> Policy:
    """The version's policy, parsed: what the gateway decides by, and what an approver's
    edit is checked against."""
    return _parsed(version.pk, json.dumps(version.policy, sort_keys=True))


@lru_cache(maxsize=512)
def _parsed(version_id: int, policy_json: str) -> Policy:
    # Versions are immutable, so a parsed policy is cached per version (its text is in
    # the key all the same: a test may build an unsaved version with any policy).
    return parse_policy(json.loads(policy_json))
