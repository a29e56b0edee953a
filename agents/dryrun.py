"""A proposed policy tried on what the agent really did: the dry-run (issue 11, point 6).

The agent's last N tool steps are taken from the journal, with the arguments the agent
asked for (an approver's edit came after the decision), and each is decided again by
`Policy.decide`, the same call the gateway makes (agents.gateway.core); the outcome is
compared with the decision the journal recorded. Nothing is written: a dry-run is a read,
and the project audits no reads but exports.

Steps refused before any policy was asked (arguments that break the tool's schema,
journaled `invalid`) are counted apart: no policy changes them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import PermissionDenied

from agents.models import Action, Agent, AgentVersion
from agents.permissions import NOT_ALLOWED, user_can
from agents.policy import Policy, PolicyError, parse_policy, policy_of

# What a step came to, named for people: the journal's decision and a policy's effect
# map onto the same four words.
ALLOWED, HELD, DENIED, SHADOWED = "allowed", "held", "denied", "shadowed"
OUTCOME_OF_EFFECT = {"allow": ALLOWED, "approve": HELD, "deny": DENIED, "shadow": SHADOWED}
OUTCOMES = (ALLOWED, HELD, DENIED, SHADOWED)

DEFAULT_LAST_N = 200
MAX_LAST_N = 5000
EXAMPLES_PER_TRANSITION = 5
BAD_LAST_N = f"The number of recent actions is a whole number from 1 to {MAX_LAST_N}."
OTHER_AGENTS_VERSION = "Version {number} belongs to another agent."


@dataclass(frozen=True, slots=True)
class Example:
    action_id: int
    run_id: int
    seq: int
    tool: str
    recorded_rule: int | None  # 1-based, as people count rules; None: no rule matched
    proposed_rule: int | None


@dataclass(slots=True)
class Transition:
    before: str
    after: str
    count: int = 0
    examples: list[Example] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.before != self.after


@dataclass(frozen=True, slots=True)
class DryRun:
    considered: int  # steps decided again
    not_by_policy: int  # steps refused before any policy (invalid arguments)
    transitions: list[Transition]  # changed ones first, then by count

    @property
    def changed(self) -> int:
        return sum(t.count for t in self.transitions if t.changed)

    @property
    def unchanged(self) -> int:
        return sum(t.count for t in self.transitions if not t.changed)

    def counts(self) -> Counter[tuple[str, str]]:
        return Counter({(t.before, t.after): t.count for t in self.transitions})


def recorded_outcome(action: Action) -> str | None:
    """What the gateway decided for a journaled tool step, or None where no policy was
    asked (arguments refused)."""
    if action.status == Action.Status.INVALID:
        return None
    return OUTCOME_OF_EFFECT.get(action.decision)


def proposed_policy(agent: Agent, policy: AgentVersion | object) -> Policy:
    """The policy to try: a version of this agent's, or a draft's JSON (PolicyError with
    the problem, as the version editor reports it, when it is not a valid policy)."""
    if isinstance(policy, AgentVersion):
        if policy.agent_id != agent.pk:
            raise PolicyError(OTHER_AGENTS_VERSION.format(number=policy.number))
        return policy_of(policy)
    return parse_policy(policy)


def recent_tool_actions(agent: Agent, last_n: int) -> list[Action]:
    """The agent's last `last_n` tool steps, newest first: one query."""
    return list(
        Action.objects.filter(run__agent=agent, kind=Action.Kind.TOOL)
        .only("pk", "run_id", "seq", "name", "requested_args", "status", "decision", "rule_index")
        .order_by("-created_at", "-pk")[:last_n]
    )


def policy_dry_run(
    *, user: Any, agent: Agent, policy: AgentVersion | object, last_n: int = DEFAULT_LAST_N
) -> DryRun:
    """Decide the agent's last `last_n` tool steps under `policy` (a version, or a draft's
    policy JSON) and count each recorded → proposed transition, with examples. For people
    who may administer the agent (PermissionDenied otherwise); PolicyError for a draft
    that is not a valid policy; ValueError for a bad `last_n`."""
    if not user_can(user, "administer", agent):
        raise PermissionDenied(NOT_ALLOWED.format(capability="administer"))
    if isinstance(last_n, bool) or not isinstance(last_n, int) or not 1 <= last_n <= MAX_LAST_N:
        raise ValueError(BAD_LAST_N)
    proposed = proposed_policy(agent, policy)
    transitions: dict[tuple[str, str], Transition] = {}
    considered = not_by_policy = 0
    for action in recent_tool_actions(agent, last_n):
        before = recorded_outcome(action)
        if before is None:
            not_by_policy += 1
            continue
        considered += 1
        verdict = proposed.decide(action.name, action.requested_args)
        after = OUTCOME_OF_EFFECT[verdict.effect]
        transition = transitions.setdefault((before, after), Transition(before, after))
        transition.count += 1
        if len(transition.examples) < EXAMPLES_PER_TRANSITION:
            transition.examples.append(
                Example(
                    action.pk,
                    action.run_id,
                    action.seq,
                    action.name,
                    None if action.rule_index is None else action.rule_index + 1,
                    None if verdict.rule is None else verdict.rule.index + 1,
                )
            )
    ordered = sorted(
        transitions.values(),
        key=lambda t: (not t.changed, -t.count, OUTCOMES.index(t.before), OUTCOMES.index(t.after)),
    )
    return DryRun(considered, not_by_policy, ordered)
