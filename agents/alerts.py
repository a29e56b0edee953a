"""Alert rules and circuit breakers (issue 14).

A rule watches one metric of one agent or one team over a window of minutes: a KPI
(agents.kpis: exception rate, cost per run, held share, time to decide …) or a raw count
(denials, failed runs, rejections, held requests, each counted when it happened). It
compares the value — or its change against the window before, for "doubled" — with a
threshold. A rule fires when the value crosses its threshold and resolves only once the
value is back past its clear threshold (hysteresis), so a value hovering at the line
neither flaps nor mails anyone twice. No data (a ratio with no runs) changes nothing.

Every metric is one entry of METRICS (`metric_register` adds one: a drift score, say),
so the form, the page and the evaluation know the same set.

Evaluation (`alerts_evaluate`, a beat timer) measures every enabled rule — a few
aggregate queries per window length, whatever the number of rules — and makes each
transition one compare-and-set on the rule's row (`state`): two workers evaluating at
once transition once, and only the winner's transaction records the event, writes its
audit event and, on commit, sends the notifications (e-mail, and the signed webhook
through approvals' delivery task, with its retries and stable webhook-id). A rule that
engages the breaker pauses its agent or team in the same transaction as it fires, as the
system actor, with the rule and the measured value as the reason; a person releases the
pause as any switch.

Locks: a firing breaker takes the switch's engage lock first, then the rule's row
(agents.store.LOCK_ORDER: kill-switch advisory locks come first everywhere).
"""

from __future__ import annotations

import hashlib
import json
import logging
import smtplib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from celery import current_app, shared_task
from django.conf import settings
from django.core.mail import EmailMessage, get_connection
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.db.models import Case, Count, Q, QuerySet, Value, When
from django.db.models.functions import Lower
from django.utils import timezone
from guardian.shortcuts import get_users_with_perms
from kombu.exceptions import OperationalError as BrokerError

from agents import drift, kpis
from agents.killswitches import lock_for_engage
from agents.killswitches import target as switch_target
from agents.models import Action, Agent, AlertEvent, AlertRule, KillSwitch, Run, Team
from agents.permissions import agents_for_user, team_can, teams_for_user, user_can, users_who_can
from agents.services import ServiceError, killswitch_engage_within
from approvals.models import ApprovalRequest
from approvals.notifications import WEBHOOK_TASK, message_id
from audit.services import SYSTEM, Actor, audit_record
from audit.verbs import Verb

log = logging.getLogger(__name__)

EVALUATE_TASK = "alerts.evaluate"
BREAKER_REASON = "circuit breaker: rule {rule!r}: {what} (threshold {threshold})"


# --- the metrics ------------------------------------------------------------------------


# {group id (agent or team): (value in the window, value in the window before)}
Values = dict[int, tuple[float | None, float | None]]


@dataclass
class Measuring:
    """One evaluation's reads, shared by its rules: the KPI figures of a scope over a span
    are computed once however many rules read them, for every agent or team a rule reading
    them watches (`shared`, which measure_rules fills before the first read)."""

    now: datetime
    # {(scope, seconds): the ids the metrics that read figures watch}
    shared: dict[tuple[str, int], set[int]] = field(default_factory=dict)
    _figures: dict[tuple[str, int], tuple[frozenset[int], dict[int, kpis.Pair]]] = field(
        default_factory=dict
    )

    def figures(self, by: str, ids: frozenset[int], span: kpis.Window) -> dict[int, kpis.Pair]:
        key = (by, int(span.length.total_seconds()))
        done, figures = self._figures.get(key, (frozenset(), {}))
        if not ids <= done:
            # Once for all (a metric registered without `shares_figures` may ask for more).
            wanted = frozenset(self.shared.get(key, set())) | ids | done
            runs = Run.objects.filter(**{f"{kpis.KEYS[by]}__in": wanted})
            figures = kpis.figures(runs, by, span, sparklines=False)
            self._figures[key] = (wanted, figures)
        return figures


Measure = Callable[[Measuring, str, frozenset[int], kpis.Window], Values]


@dataclass(frozen=True)
class Metric:
    name: str
    label: str
    how: str  # how kpis.show writes a value: count, share, eur, seconds, number
    measure: Measure
    # It reads Measuring.figures: computed once for all such metrics' agents or teams.
    shares_figures: bool = False


METRICS: dict[str, Metric] = {}


def metric_register(metric: Metric) -> None:
    """Add a metric rules may watch (by its name; a second registration replaces it)."""
    METRICS[metric.name] = metric


def _kpi(name: str) -> Measure:
    def measure(m: Measuring, by: str, ids: frozenset[int], span: kpis.Window) -> Values:
        pairs = m.figures(by, ids, span)
        return {
            pk: (getattr(pair.current, name), getattr(pair.previous, name))
            for pk, pair in pairs.items()
        }

    return measure


def _counted(qs: QuerySet[Any], when: str, key: str) -> Measure:
    """A raw count: the rows of `qs` whose `when` falls in the window (and the one before),
    by agent or team (`key` is the path to the agent from the row)."""

    def measure(m: Measuring, by: str, ids: frozenset[int], span: kpis.Window) -> Values:
        group = key + ("_id" if by == "agent" else "__team_id")
        rows = (
            qs.filter(**{f"{group}__in": ids, f"{when}__gte": span.previous_start})
            .filter(**{f"{when}__lt": span.end})
            .annotate(
                cur=Case(When(**{f"{when}__gte": span.start}, then=Value(True)), default=False)
            )
            .order_by()
            .values(group, "cur")
            .annotate(n=Count("pk"))
        )
        out: dict[int, list[float]] = {pk: [0.0, 0.0] for pk in ids}
        for row in rows:
            out[row[group]][0 if row["cur"] else 1] = float(row["n"])
        return {pk: (now, before) for pk, (now, before) in out.items()}

    return measure


_LABELS = {name: (label, how) for name, label, how, _ in kpis.LINES}
for _name in (
    "exception_rate",
    "held_share",
    "cost_per_run",
    "cost_per_transaction",
    "tokens_per_run",
    "cycle_p95",
    "decide_p50",
    "decide_p95",
    "sla_attainment",
    "runs",
):
    metric_register(Metric(_name, *_LABELS[_name], _kpi(_name), shares_figures=True))
metric_register(
    Metric(
        "denials",
        "tool steps denied by policy",
        "count",
        _counted(
            Action.objects.filter(kind=Action.Kind.TOOL, status=Action.Status.DENIED),
            "created_at",
            "run__agent",
        ),
    )
)
metric_register(
    Metric(
        "failures",
        "runs failed",
        "count",
        _counted(Run.objects.filter(status=Run.Status.FAILED), "finished_at", "agent"),
    )
)
metric_register(
    Metric(
        "rejections",
        "held steps rejected by people",
        "count",
        _counted(
            ApprovalRequest.objects.filter(status=ApprovalRequest.Status.REJECTED),
            "decided_at",
            "agent",
        ),
    )
)
metric_register(
    Metric(
        "held",
        "steps held for people",
        "count",
        _counted(ApprovalRequest.objects.all(), "created_at", "agent"),
    )
)


def _drift(m: Measuring, by: str, ids: frozenset[int], span: kpis.Window) -> Values:
    """The drift indicator (agents.drift) over the rule's window against the windows of its
    length before it; a team's is its most drifted agent's. No value without enough data,
    and none for the window before (a drift is already a comparison)."""
    agents = Agent.objects.filter(**({"pk__in": ids} if by == "agent" else {"team_id__in": ids}))
    out: dict[int, float | None] = dict.fromkeys(ids)
    for agent in agents.order_by("pk"):
        score = drift.drift_report(agent, span, drift.baseline_before(span)).score
        key = agent.pk if by == "agent" else agent.team_id
        if score is not None:
            out[key] = max(score, out[key] or 0.0)
    return {pk: (value, None) for pk, value in out.items()}


metric_register(Metric("drift", "drift indicator (largest significant PSI)", "amount", _drift))


def metric_choices() -> list[tuple[str, str]]:
    return [(m.name, m.label) for m in sorted(METRICS.values(), key=lambda m: m.label)]


def show(rule: AlertRule, value: float | None) -> str:
    """A rule's value (or threshold) as the pages, reasons and e-mails write it."""
    if value is None:
        return "no data"
    if rule.basis == AlertRule.Basis.CHANGE:
        return f"×{value:.2f} the window before"
    metric = METRICS.get(rule.metric)
    if metric is None:
        return f"{value:g}"
    if metric.how == "count" and float(value).is_integer():
        return kpis.show(int(value), "count")  # 4 denials, not 4.0
    return kpis.show(value, metric.how)


def label(rule: AlertRule) -> str:
    metric = METRICS.get(rule.metric)
    return metric.label if metric else rule.metric


def describe(rule: AlertRule) -> str:
    """ "exception rate above 50.0 % over 5 min" (the rule in words)."""
    return (
        f"{label(rule)} {rule.comparison} {show(rule, rule.threshold)} "
        f"over {rule.window_minutes} min"
    )


# --- measuring and deciding -------------------------------------------------------------


def _owner(rule: AlertRule) -> tuple[str, int]:
    return ("agent", rule.agent_id) if rule.agent_id else ("team", rule.team_id or 0)


def measure_rules(rules: list[AlertRule], now: datetime | None = None) -> dict[int, float | None]:
    """{rule id: the value each rule compares}: a few queries per window length."""
    m = Measuring(now or timezone.now())
    wanted: dict[tuple[str, str, int], set[int]] = {}
    for rule in rules:
        by, pk = _owner(rule)
        wanted.setdefault((rule.metric, by, rule.window_minutes), set()).add(pk)
    # The KPI rules of one scope and window read the same figures: computed once, for all
    # their ids. Every metric measures only its own rules' agents or teams (a drift score
    # is a few queries an agent: never for an agent no drift rule watches).
    for (metric, by, minutes), ids in wanted.items():
        known = METRICS.get(metric)
        if known is not None and known.shares_figures:
            m.shared.setdefault((by, minutes * 60), set()).update(ids)
    values: dict[tuple[str, str, int], Values] = {}
    for (metric, by, minutes), ids in wanted.items():
        known = METRICS.get(metric)
        if known is None:
            continue  # its module is not loaded here: no data, nothing changes
        span = kpis.Window("custom", m.now, span=timedelta(minutes=minutes))
        values[(metric, by, minutes)] = known.measure(m, by, frozenset(ids), span)
    out: dict[int, float | None] = {}
    for rule in rules:
        by, pk = _owner(rule)
        now_value, before = values.get((rule.metric, by, rule.window_minutes), {}).get(
            pk, (None, None)
        )
        if rule.basis == AlertRule.Basis.CHANGE:
            # A change needs something to change from: nothing before is no data.
            out[rule.pk] = None if now_value is None or not before else now_value / before
        else:
            out[rule.pk] = None if now_value is None else float(now_value)
    return out


def next_state(rule: AlertRule, value: float | None) -> str | None:
    """The state the value moves the rule to, or None: it fires past the threshold and
    resolves only back past the clear threshold; between the two it stays as it is."""
    if value is None:
        return None
    above = rule.comparison == AlertRule.Comparison.ABOVE
    if rule.state == AlertRule.State.RESOLVED:
        crossed = value > rule.threshold if above else value < rule.threshold
        return AlertRule.State.FIRING if crossed else None
    cleared = value <= rule.clear_threshold if above else value >= rule.clear_threshold
    return AlertRule.State.RESOLVED if cleared else None


def alerts_evaluate(now: datetime | None = None) -> int:
    """Measure every enabled rule and make the transitions due; returns how many this
    call made (another evaluator's are not counted)."""
    now = now or timezone.now()
    rules = list(AlertRule.objects.filter(enabled=True).select_related("agent__team", "team"))
    values = measure_rules(rules, now)
    # Most rules stay as they are: their values are written in one statement, not one
    # each (the same write alert_apply makes for them; a transition is its own).
    quiet = [rule for rule in rules if next_state(rule, values.get(rule.pk)) is None]
    for rule in quiet:
        rule.last_value, rule.last_evaluated_at = values.get(rule.pk), now
    AlertRule.objects.bulk_update(quiet, ["last_value", "last_evaluated_at"], batch_size=1000)
    moving = [rule for rule in rules if next_state(rule, values.get(rule.pk)) is not None]
    return sum(alert_apply(rule=rule, value=values.get(rule.pk), now=now) for rule in moving)


# The settings a transition is decided by (agents.alerts.next_state and the breaker).
JUDGED_BY = (
    "metric",
    "basis",
    "comparison",
    "threshold",
    "clear_threshold",
    "window_minutes",
    "engage_breaker",
)


def alert_apply(*, rule: AlertRule, value: float | None, now: datetime | None = None) -> bool:
    """Move the rule to the state `value` calls for, if it is still in the state it was
    read in: True if this call made the transition."""
    now = now or timezone.now()
    target = next_state(rule, value)
    if target is None:
        AlertRule.objects.filter(pk=rule.pk).update(last_value=value, last_evaluated_at=now)
        return False
    breaker = target == AlertRule.State.FIRING and rule.engage_breaker
    with transaction.atomic(durable=True):
        if breaker:
            by, pk = _owner(rule)
            lock_for_engage(switch_target(by, pk))
        # Only if the rule is still the one the value was judged by: an edit committed
        # since it was read (a higher threshold, the breaker turned off) wins over a
        # decision taken under the old settings; the next pass judges by the new ones.
        judged_by = {name: getattr(rule, name) for name in JUDGED_BY}
        won = AlertRule.objects.filter(
            pk=rule.pk, state=rule.state, enabled=True, **judged_by
        ).update(state=target, state_since=now, last_value=value, last_evaluated_at=now)
        if not won:
            return False  # another evaluator made it, or the rule changed meanwhile
        rule.state, rule.state_since, rule.last_value = target, now, value
        switch, note = _breaker(rule, value) if breaker else (None, "")
        _transition_record(rule, value=value, switch=switch, note=note)
    return True


def _breaker(rule: AlertRule, value: float | None) -> tuple[KillSwitch | None, str]:
    reason = BREAKER_REASON.format(
        rule=rule.name,
        what=f"{label(rule)} = {show(rule, value)}",
        threshold=show(rule, rule.threshold),
    )
    by, _ = _owner(rule)
    try:
        switch = killswitch_engage_within(
            scope=by,
            mode=KillSwitch.Mode.PAUSE,
            reason=reason,
            user=None,
            agent=rule.agent if by == "agent" else None,
            team=rule.team if by == "team" else None,
        )
    except ServiceError:
        # Someone (or another rule) stopped it already: stopped is what the breaker wants.
        return None, "already stopped"
    return switch, ""


def _transition_record(
    rule: AlertRule,
    *,
    value: float | None,
    switch: KillSwitch | None = None,
    note: str = "",
    actor: Actor = SYSTEM,
) -> AlertEvent:
    event = AlertEvent.objects.create(
        rule=rule,
        state=rule.state,
        value=value,
        threshold=rule.threshold if rule.state == AlertRule.State.FIRING else rule.clear_threshold,
        switch=switch,
        note=note,
    )
    firing = rule.state == AlertRule.State.FIRING
    audit_record(
        verb=Verb.ALERT_FIRED if firing else Verb.ALERT_RESOLVED,
        actor=actor,
        subject_type="alert_rule",
        subject_id=rule.pk,
        agent=rule.agent,
        team=rule.team if rule.agent_id is None else None,
        payload={
            "rule": rule.pk,
            "rule_name": rule.name,
            "metric": rule.metric,
            "basis": rule.basis,
            "comparison": rule.comparison,
            "value": value,
            "threshold": event.threshold,
            "window_minutes": rule.window_minutes,
            "switch": switch.pk if switch else None,
            "note": note,
            "summary": f"{rule.name}: {label(rule)} = {show(rule, value)}"
            + (f" (threshold {show(rule, rule.threshold)})" if firing else "")
            + (" — paused by circuit breaker" if switch else ""),
        },
    )
    _notify_on_commit(event.pk)
    return event


# --- notifications ----------------------------------------------------------------------


def _notify_on_commit(event_id: int) -> None:
    # Robust, as approvals' notifications: a failing e-mail never undoes a transition.
    def notify() -> None:
        _notify(event_id)

    transaction.on_commit(notify, robust=True)


def _notify(event_id: int) -> None:
    event = (
        AlertEvent.objects.select_related("rule__agent__team", "rule__team", "switch")
        .filter(pk=event_id)
        .first()
    )
    if event is None:
        return
    if event.rule.webhook_url:
        _enqueue_webhook(event)
    _send_mail(event)


def rule_url(rule: AlertRule) -> str:
    base: str = getattr(settings, "BATON_BASE_URL", "") or ""
    return f"{base.rstrip('/')}/alerts/{rule.pk}/"


def webhook_body(event: AlertEvent) -> str:
    """Canonical JSON (sorted keys, no spaces, ASCII): the bytes signed are the bytes
    sent. The event's id is in it, so every retry carries one webhook-id."""
    rule = event.rule
    payload: dict[str, Any] = {
        "event": f"alert.{event.state}",
        "alert_event_id": event.pk,
        "rule": {
            "id": rule.pk,
            "name": rule.name,
            "metric": rule.metric,
            "basis": rule.basis,
            "comparison": rule.comparison,
            "threshold": rule.threshold,
            "clear_threshold": rule.clear_threshold,
            "window_minutes": rule.window_minutes,
        },
        "state": event.state,
        "value": event.value,
        "at": event.at.isoformat().replace("+00:00", "Z"),
        "agent": {"slug": rule.agent.slug, "name": rule.agent.name} if rule.agent else None,
        "team": {"slug": (rule.agent.team if rule.agent else rule.team).slug},  # type: ignore[union-attr]
        "breaker": {"switch_id": event.switch_id, "mode": "pause"} if event.switch_id else None,
        "url": rule_url(rule),
    }
    return json.dumps(payload, sort_keys=True, separators=(",", ":"))


def _enqueue_webhook(event: AlertEvent) -> None:
    url = event.rule.webhook_url
    if not getattr(settings, "BATON_WEBHOOK_SECRET", ""):
        log.error("BATON_WEBHOOK_SECRET is empty: alert %s not sent to %s unsigned", event.pk, url)
        return
    body = webhook_body(event)
    try:
        current_app.signature(WEBHOOK_TASK, args=(url, body, message_id(body))).delay()
    except BrokerError:
        log.exception("could not enqueue alert %s to %s", event.pk, url)


def recipients(rule: AlertRule) -> list[str]:
    """The rule's own addresses, and its agent's (or team's) supervisors' if it asks."""
    addresses = split_addresses(rule.notify_emails)
    if rule.notify_supervisors:
        people: list[Any] = []
        if rule.agent is not None:
            people = list(users_who_can("supervise", rule.agent))
        elif rule.team is not None:
            people = [
                p
                for p in get_users_with_perms(
                    rule.team, only_with_perms_in=["supervise_team"], with_group_users=True
                )
                if getattr(p, "is_active", False)
            ]
        addresses += sorted(p.email for p in people if p.email)
    return list(dict.fromkeys(addresses))


def split_addresses(text: str) -> list[str]:
    return [a for a in text.replace(",", " ").split() if a]


def _send_mail(event: AlertEvent) -> None:
    rule = event.rule
    addresses = recipients(rule)
    if not addresses:
        return
    where = f"{rule.agent.name} ({rule.agent.slug})" if rule.agent else f"team {rule.team}"
    if event.state == AlertRule.State.FIRING:
        subject = f"[Baton] Alert firing: {rule.name} on {where}"
    else:
        subject = f"[Baton] Alert resolved: {rule.name} on {where}"
    subject = " ".join(subject.split())  # a name with a newline is a header injection
    lines = [
        f"{rule.name}: {describe(rule)}.",
        f"Measured: {show(rule, event.value)} at {event.at:%Y-%m-%d %H:%M:%S %Z}.",
    ]
    if event.switch_id:
        lines.append(f"The circuit breaker paused {where}: release it in Baton when it is safe.")
    lines += ["", rule_url(rule)]
    messages = [
        EmailMessage(subject=subject, body="\n".join(lines) + "\n", to=[address])
        for address in addresses
    ]
    try:
        get_connection(fail_silently=False).send_messages(messages)
    except (smtplib.SMTPException, OSError):
        log.exception("could not e-mail alert %s of rule %s", event.pk, rule.pk)


@shared_task(name=EVALUATE_TASK)
def evaluate() -> int:
    return alerts_evaluate()


# --- who sees and who configures --------------------------------------------------------


def rules_for_user(user: Any) -> QuerySet[AlertRule]:
    """The rules the person may see: those of agents they see, and those of teams they
    see as a whole (a team's value covers agents they may not see)."""
    return AlertRule.objects.filter(
        Q(agent__in=agents_for_user(user).values("pk"))
        | Q(team__in=teams_for_user(user, "view").values("pk"))
    ).select_related("agent__team", "team")


def firing_for_user(user: Any) -> list[AlertRule]:
    """The enabled rules firing now that the person may see, newest first, each with its
    value as the pages write it (`value_shown`)."""
    rules = list(
        rules_for_user(user)
        .filter(state=AlertRule.State.FIRING, enabled=True)
        .order_by("-state_since", "pk")
    )
    for rule in rules:
        rule.value_shown = show(rule, rule.last_value)  # type: ignore[attr-defined]
    return rules


def agent_rules(agent: Agent) -> list[AlertRule]:
    """The rules on one agent (for a person who may see it), firing first."""
    rules = list(AlertRule.objects.filter(agent=agent).order_by("-state", "name", "pk"))
    for rule in rules:
        rule.value_shown = show(rule, rule.last_value)  # type: ignore[attr-defined]
        rule.described = describe(rule)  # type: ignore[attr-defined]
    return rules


def may_configure(user: Any, rule: AlertRule) -> bool:
    if rule.agent is not None:
        return user_can(user, "administer", rule.agent)
    return rule.team is not None and team_can(user, "administer", rule.team)


def targets_for(user: Any) -> list[tuple[str, str]]:
    """("agent:<slug>" or "team:<slug>", label) of what the person may put rules on."""
    teams = [(f"team:{t.slug}", f"team {t.name}") for t in teams_for_user(user, "administer")]
    agents = [
        (f"agent:{a.slug}", f"agent {a.name} ({a.team.name})")
        for a in agents_for_user(user, "administer").filter(archived_at__isnull=True)
    ]
    return teams + agents


# --- configuring rules ------------------------------------------------------------------

CONFIG_FIELDS = (
    "name",
    "metric",
    "basis",
    "comparison",
    "threshold",
    "clear_threshold",
    "window_minutes",
    "notify_emails",
    "notify_supervisors",
    "webhook_url",
    "engage_breaker",
    "enabled",
)


def rule_config(rule: AlertRule) -> dict[str, Any]:
    return {name: getattr(rule, name) for name in CONFIG_FIELDS}


def webhook_recorded(url: str) -> str:
    """A webhook URL as the trail records it: where it goes and a digest of it, not its
    path and query, which for many receivers (chat services' incoming webhooks) are the
    secret that lets anyone post there. The trail is read by every supervisor of the
    agent and kept for ever; the digest still tells one URL from another."""
    if not url:
        return ""
    parts = urlsplit(url)
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/… (sha256 {digest})"


def _recorded(config: dict[str, Any]) -> dict[str, Any]:
    if config.get("webhook_url"):
        return {**config, "webhook_url": webhook_recorded(config["webhook_url"])}
    return config


RULE_NAME_TAKEN = "There is already a rule named {name!r} on this {kind}: choose another name."


class RuleNameTaken(ServiceError):
    """A rule of that name (whatever its case) is on the agent or team already."""


def _name_taken(rule: AlertRule) -> RuleNameTaken:
    kind = "agent" if rule.agent_id else "team"
    return RuleNameTaken(RULE_NAME_TAKEN.format(name=rule.name, kind=kind))


def _taken(rule: AlertRule) -> bool:
    # Lower as the constraint has it (Postgres's lower, not Python's).
    owner = Q(agent_id=rule.agent_id) if rule.agent_id else Q(team_id=rule.team_id)
    same = AlertRule.objects.alias(low=Lower("name")).filter(owner, low=Lower(Value(rule.name)))
    return same.exclude(pk=rule.pk).exists() if rule.pk else same.exists()


def alert_rule_create(
    *, user: Any, agent: Agent | None = None, team: Team | None = None, **config: Any
) -> AlertRule:
    """A new rule on an agent or a team (the caller has checked the person administers
    it and the form has validated the values). RuleNameTaken if the agent or team has a
    rule of that name: a form sent twice adds one rule (the database's constraint
    settles two sent at once)."""
    rule = AlertRule(agent=agent, team=team, created_by=user, **config)
    if _taken(rule):
        raise _name_taken(rule)
    try:
        return _create(rule)
    except IntegrityError as exc:
        if _taken(rule):
            raise _name_taken(rule) from exc
        raise


def _create(rule: AlertRule) -> AlertRule:
    agent, team, user = rule.agent, rule.team, rule.created_by
    with transaction.atomic(durable=True):
        rule.save(force_insert=True)
        audit_record(
            verb=Verb.ALERT_RULE_CREATED,
            actor=Actor.of(user),
            subject_type="alert_rule",
            subject_id=rule.pk,
            agent=agent,
            team=team,
            payload={"target": agent.slug if agent else team.slug, **_recorded(rule_config(rule))},  # type: ignore[union-attr]
        )
    return rule


def alert_rule_update(*, rule: AlertRule, user: Any, **config: Any) -> AlertRule:
    """Change a rule's configuration. Disabling a firing rule resolves it (recorded as
    any transition, by the person who disabled it); the state is otherwise left to the
    next evaluation under the new thresholds. Nothing changed (a form sent twice) records
    nothing; a name another rule of the agent or team has is RuleNameTaken."""
    try:
        return _update(rule, user, config)
    except IntegrityError as exc:
        wanted = AlertRule(
            pk=rule.pk,
            name=config.get("name", rule.name),
            agent_id=rule.agent_id,
            team_id=rule.team_id,
        )
        if _taken(wanted):
            raise _name_taken(wanted) from exc
        raise


def _update(rule: AlertRule, user: Any, config: dict[str, Any]) -> AlertRule:
    with transaction.atomic(durable=True):
        current = AlertRule.objects.select_for_update(no_key=True).get(pk=rule.pk)
        before = rule_config(current)
        for name, value in config.items():
            if name not in CONFIG_FIELDS:
                raise ValueError(f"not a rule setting: {name}")
            setattr(current, name, value)
        changed = {k: v for k, v in rule_config(current).items() if before[k] != v}
        if not changed:
            return current  # sent twice, or saved as it was: nothing to record
        if "name" in changed and _taken(current):
            raise _name_taken(current)
        resolving = not current.enabled and current.state == AlertRule.State.FIRING
        if resolving:
            current.state, current.state_since = AlertRule.State.RESOLVED, timezone.now()
        current.save()
        audit_record(
            verb=Verb.ALERT_RULE_UPDATED,
            actor=Actor.of(user),
            subject_type="alert_rule",
            subject_id=current.pk,
            agent=current.agent,
            team=current.team if current.agent_id is None else None,
            payload={"changed": _recorded(changed)},
        )
        if resolving:
            _transition_record(current, value=None, note="rule disabled", actor=Actor.of(user))
    return current


def breaker_holding(rule: AlertRule) -> list[KillSwitch]:
    """The pauses the rule's breaker engaged that nobody has released yet. Disabling or
    editing the rule leaves them: a person releases a breaker's pause as any switch."""
    return list(
        KillSwitch.objects.filter(
            pk__in=rule.events.filter(switch__isnull=False).values("switch_id"),
            released_at__isnull=True,
        ).order_by("pk")
    )


def history(rule: AlertRule, limit: int = 50) -> list[AlertEvent]:
    return list(rule.events.select_related("switch")[:limit])


def validate_addresses(text: str) -> list[str]:
    """The addresses in `text`, each checked (ValidationError names the bad one)."""
    addresses = split_addresses(text)
    for address in addresses:
        validate_email(address)
    return addresses
