from __future__ import annotations

import hashlib
import uuid
from datetime import datetime
from typing import Any, ClassVar

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.db.models.functions import Lower

from audit.jsonsafe import StoredJSONDecoder


class Team(models.Model):
    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=100)
    # Archived (agents.catalog): kept with its history, closed to new agents.
    archived_at = models.DateTimeField(null=True, blank=True)
    # Four-eyes on policy: a publish by one admin waits for a second admin of the team
    # (approvals.publish) and takes effect only once they approve it.
    publish_needs_second_admin = models.BooleanField(default=False)

    # Not stored: whether the person looking may supervise the whole team (selectors).
    can_supervise: bool = False

    class Meta:
        ordering = ["name"]
        permissions = [
            ("supervise_team", "Supervise the team's agents: runs, approvals, kill switches"),
            ("administer_team", "Administer the team's agents: versions, policies, grants"),
        ]

    def __str__(self) -> str:
        return self.name


class Agent(models.Model):
    class Kind(models.TextChoices):
        HOSTED = "hosted", "Hosted (runs in Baton's workers)"
        REMOTE = "remote", "Remote (calls Baton's API)"

    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="agents")
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.HOSTED)
    # The rollout (agents.rollout changes it): new runs start on the live version, or on
    # the canary for a deterministic canary_percent of them (version_for_run); every
    # tool step of a live run is also decided by the shadow version's policy, recorded
    # and never executed; the previous live version is what a rollback restores.
    live_version = models.ForeignKey(
        "AgentVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    shadow_version = models.ForeignKey(
        "AgentVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    canary_version = models.ForeignKey(
        "AgentVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    canary_percent = models.PositiveSmallIntegerField(default=0)
    previous_version = models.ForeignKey(
        "AgentVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    # The time people should take to decide this agent's held actions: the KPI pages
    # (agents.kpis) count the decisions taken within it as SLA attainment.
    decision_sla_minutes = models.PositiveIntegerField(default=60)
    # Archived (agents.catalog): starts no new runs, its API keys answer 401, it leaves the
    # overview; its runs, versions and history stay readable.
    archived_at = models.DateTimeField(null=True, blank=True)

    # Not stored: active, paused or halted, derived from the engaged kill switches by
    # agents.selectors.agent_state for the pages that show it.
    state: str = "active"
    can_supervise: bool = False
    pace: list[int]
    current_run: Any = None

    class Meta:
        ordering = ["team__name", "name"]
        permissions = [
            ("supervise_agent", "Supervise the agent: runs, approvals, kill switches"),
            ("administer_agent", "Administer the agent: versions, policies, grants"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(canary_percent__lte=100), name="agent_canary_percent_range"
            ),
            models.CheckConstraint(
                condition=Q(canary_version__isnull=False) | Q(canary_percent=0),
                name="agent_canary_percent_needs_canary",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def version_for_run(self, run_id: int) -> int | None:
        """The version a new run with this id starts on: the canary for a share of
        canary_percent of runs, chosen by the run's id alone (canary_bucket), so the
        choice is deterministic and the same for hosted and remote runs; else live."""
        if self.canary_version_id is not None and canary_bucket(run_id) < self.canary_percent:
            return self.canary_version_id
        return self.live_version_id


def canary_bucket(run_id: int) -> int:
    """A run's canary bucket, 0–99: uniform over run ids, fixed for the run."""
    digest = hashlib.sha256(f"baton-canary:{run_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100


class AgentVersion(models.Model):
    """A configuration of an agent: a draft may be edited (agents.drafts) until it is
    published; a published version is immutable, and a change to it is a new version."""

    class Stage(models.TextChoices):
        DRAFT = "draft"
        SHADOW = "shadow"
        CANARY = "canary"
        LIVE = "live"
        RETIRED = "retired"

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    program = models.CharField(max_length=200, help_text="Registered name of the agent program")
    config = models.JSONField(default=dict, blank=True)
    policy = models.JSONField(default=dict, blank=True)
    # Where the version stands in its agent's rollout; the agent's rollout fields say
    # which version holds each place (agents.rollout keeps the two in step).
    stage = models.CharField(max_length=10, choices=Stage.choices, default=Stage.DRAFT)
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    note = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    published_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["agent", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["agent", "number"], name="version_number_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.agent.slug} v{self.number}"


class RunQuerySet(models.QuerySet["Run"]):
    def due(self, now: datetime) -> RunQuerySet:
        """Runs no delay holds back any more: their wake time (a rate limit's, a transient
        fault's backoff) has passed, or they have none."""
        return self.filter(Q(wake_at__isnull=True) | Q(wake_at__lte=now))

    def unsent_since(self, moment: datetime) -> RunQuerySet:
        """Runs not handed to the broker since `moment` (or never)."""
        return self.filter(Q(enqueued_at__isnull=True) | Q(enqueued_at__lt=moment))


class Run(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        WAITING = "waiting"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    class WaitReason(models.TextChoices):
        NONE = "", "—"
        APPROVAL = "approval", "waiting for approval"
        PAUSED = "paused", "paused by a kill switch"
        RATE_LIMIT = "rate_limit", "delayed by a rate limit"

    FINAL = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)
    # In the workers' hands: queued, or running (on a live lease, or one that ran out).
    ACTIVE = (Status.QUEUED, Status.RUNNING)

    agent = models.ForeignKey(Agent, on_delete=models.PROTECT, related_name="runs")
    version = models.ForeignKey(AgentVersion, on_delete=models.PROTECT, related_name="runs")
    input = models.JSONField(decoder=StoredJSONDecoder, default=dict)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    wait_reason = models.CharField(
        max_length=12, choices=WaitReason.choices, default=WaitReason.NONE, blank=True
    )
    output = models.JSONField(decoder=StoredJSONDecoder, null=True, blank=True)
    error = models.TextField(blank=True)
    launched_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Delivery bookkeeping: when the run was last handed to the broker, and not before when
    # it may run again (rate limits); the sweep reads both to find runs nobody picked up.
    enqueued_at = models.DateTimeField(null=True, blank=True)
    wake_at = models.DateTimeField(null=True, blank=True)
    # The lease: the one worker executing the run holds the token until lease_until; every
    # step renews it and every write is fenced by it, so a worker that lost its lease can
    # no longer change the run.
    lease_token = models.UUIDField(null=True, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    # The Celery worker that claimed the run last (for the workers page).
    worker = models.CharField(max_length=200, blank=True)
    # A remote agent's `Idempotency-Key` for starting this run: the same key starts one run.
    start_key = models.CharField(max_length=200, blank=True)

    objects = RunQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["agent", "-created_at"], name="run_agent_recent"),
            models.Index(fields=["status", "enqueued_at"], name="run_status_enqueued"),
            # The overview's team lines: runs waiting, and runs failed since a time, by
            # agent, read from the index alone (Postgres; other databases skip `include`).
            models.Index(
                fields=["status", "finished_at"], include=["agent"], name="run_status_finished"
            ),
            # The KPIs of a window of many agents (agents.kpis): the window's runs by their
            # creation, whoever's they are (run_agent_recent serves one agent's), and their
            # cycle times' percentiles from the index alone (Postgres).
            models.Index(
                fields=["created_at"],
                include=["finished_at", "agent", "version"],
                name="run_created_durations",
            ),
            # The overview's cards: an agent's runs counted by status from the index alone.
            models.Index(fields=["agent", "status"], name="run_agent_status"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["agent", "start_key"],
                condition=~models.Q(start_key=""),
                name="run_one_per_start_key",
            )
        ]

    def __str__(self) -> str:
        return f"run {self.pk} of {self.agent_id}"

    @property
    def is_final(self) -> bool:
        return self.status in self.FINAL


class Action(models.Model):
    """One step of a run's journal: the unit Baton governs, shows and audits."""

    class Kind(models.TextChoices):
        TOOL = "tool"
        MODEL = "model"
        VALUE = "value", "recorded value (clock, random)"

    class Status(models.TextChoices):
        STARTED = "started"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        DENIED = "denied"
        INVALID = "invalid", "invalid arguments"
        SHADOWED = "shadowed"
        HELD = "held", "held for approval"
        APPROVED = "approved", "approved, not yet executed"
        REJECTED = "rejected"
        UNKNOWN = "unknown", "outcome unknown"
        CANCELLED = "cancelled"

    # Steps waiting for people: held by a rule, or its outcome unknown after a crash.
    UNDECIDED = (Status.HELD, Status.UNKNOWN)
    # Steps still open: a tool call started, or one waiting on a decision (held, or its
    # outcome unknown after a crash) or on being executed once approved.
    AWAITING = (*UNDECIDED, Status.APPROVED)
    OPEN_STATUSES = (Status.STARTED, *AWAITING)

    # Outcomes a replay returns or raises without asking the gateway again.
    FINAL = (
        Status.SUCCEEDED,
        Status.FAILED,
        Status.DENIED,
        Status.INVALID,
        Status.SHADOWED,
        Status.REJECTED,
        Status.CANCELLED,
    )

    class Decision(models.TextChoices):
        NONE = "", "—"
        ALLOW = "allow"
        DENY = "deny"
        APPROVE = "approve"
        SHADOW = "shadow"

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="actions")
    seq = models.PositiveIntegerField()
    kind = models.CharField(max_length=5, choices=Kind.choices)
    name = models.CharField(max_length=100)
    # What the agent asked for, and what was (or will be) executed: they differ when an
    # approver edited the arguments. Replay compares against the request.
    requested_args = models.JSONField(decoder=StoredJSONDecoder, default=dict)
    args = models.JSONField(decoder=StoredJSONDecoder, default=dict)
    args_hash = models.CharField(max_length=64)
    status = models.CharField(max_length=10, choices=Status.choices)
    decision = models.CharField(max_length=8, choices=Decision.choices, blank=True, default="")
    rule_index = models.IntegerField(null=True, blank=True)
    rule = models.JSONField(null=True, blank=True)
    reason = models.TextField(blank=True)
    result = models.JSONField(decoder=StoredJSONDecoder, null=True, blank=True)
    error = models.TextField(blank=True)
    meta = models.JSONField(decoder=StoredJSONDecoder, default=dict, blank=True)
    idempotency_key = models.CharField(max_length=100)
    attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["run", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["run", "seq"], name="action_seq_unique"),
        ]
        indexes = [
            models.Index(fields=["-created_at"], name="action_recent"),
            # The few steps waiting on people or on being executed (AWAITING; a test holds
            # the two equal): a halt cancels those of hundreds of runs without reading
            # every step those runs ever took.
            models.Index(
                fields=["run"],
                name="action_awaiting",
                condition=models.Q(status__in=["held", "unknown", "approved"]),
            ),
            # The few tool steps denied by policy: the KPIs' look-up of a window's runs
            # with a step denied (agents.kpis._exception) reads them from here, not every
            # step of the window (their runs in it too: read from the index alone).
            models.Index(
                fields=["-created_at"],
                include=["run"],
                name="action_denied_recent",
                condition=models.Q(kind="tool", status="denied"),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.run_id}#{self.seq} {self.name}"

    @property
    def duration_ms(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds() * 1000
        return None


class ShadowDecision(models.Model):
    """What the agent's shadow version's policy decided for a tool step of a live run:
    computed with the step and recorded beside it, in the step's transaction; never
    executed. The step's own decision is on its Action (decision, rule)."""

    action = models.OneToOneField(Action, on_delete=models.CASCADE, related_name="shadow")
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="+")
    version = models.ForeignKey(AgentVersion, on_delete=models.PROTECT, related_name="+")
    # A policy effect (agents.policy.EFFECTS), spelled as Action.decision spells it.
    effect = models.CharField(max_length=8, choices=Action.Decision.choices)
    rule_index = models.IntegerField(null=True, blank=True)
    rule = models.JSONField(null=True, blank=True)
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["agent", "version", "-created_at"], name="shadow_agent_recent")
        ]

    def __str__(self) -> str:
        return f"shadow {self.effect} for action {self.action_id}"


class SwitchScope(models.TextChoices):
    GLOBAL = "global", "everything"
    TEAM = "team"
    AGENT = "agent"


class KillSwitch(models.Model):
    Scope = SwitchScope

    # The one table of kill-switch scopes and their advisory locks, in the order admission
    # takes them: a lock key is the scope's class in the high bits and the team or agent
    # id in the low 40. agents.killswitches builds targets, keys and the SQL of
    # baton_admit from it (tests/agents/test_store_contract.py holds the live SQL equal).
    LOCK_CLASS: ClassVar[dict[str, int]] = {Scope.GLOBAL: 7701, Scope.TEAM: 7702, Scope.AGENT: 7703}

    class Mode(models.TextChoices):
        PAUSE = "pause"
        HALT = "halt"

    scope = models.CharField(max_length=6, choices=Scope.choices)
    team = models.ForeignKey(Team, null=True, blank=True, on_delete=models.PROTECT)
    agent = models.ForeignKey(Agent, null=True, blank=True, on_delete=models.PROTECT)
    # "global", "team:<id>" or "agent:<id>": one engaged switch per target, portable across
    # databases (a unique constraint over nullable columns would not be).
    target = models.CharField(max_length=40)
    mode = models.CharField(max_length=5, choices=Mode.choices)
    reason = models.TextField()
    engaged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.PROTECT, related_name="+"
    )
    engaged_at = models.DateTimeField(auto_now_add=True)
    released_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    released_at = models.DateTimeField(null=True, blank=True)
    release_reason = models.TextField(blank=True)

    # Not stored: whether the person looking may release it (console.context).
    can_release: bool = False

    class Meta:
        ordering = ["-engaged_at"]
        permissions = [("engage_global", "Engage and release the global kill switch")]
        constraints = [
            models.UniqueConstraint(
                fields=["target"],
                condition=Q(released_at__isnull=True),
                name="one_engaged_switch_per_target",
            ),
            models.CheckConstraint(
                condition=(
                    Q(scope=SwitchScope.GLOBAL, team__isnull=True, agent__isnull=True)
                    | Q(scope=SwitchScope.TEAM, team__isnull=False, agent__isnull=True)
                    | Q(scope=SwitchScope.AGENT, team__isnull=True, agent__isnull=False)
                ),
                name="switch_scope_matches_target",
            ),
            models.CheckConstraint(condition=~Q(reason=""), name="switch_needs_reason"),
        ]

    def __str__(self) -> str:
        return f"{self.mode} {self.target}"


# The sandbox business tables the demo agents act on, so every side effect is visible
# and countable. The idempotency key is what makes a retried tool call harmless, just as
# a real payment provider's idempotency key would.
class Payment(models.Model):
    idempotency_key = models.CharField(max_length=100, unique=True)
    claim_id = models.CharField(max_length=40)
    payee = models.CharField(max_length=100)
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    currency = models.CharField(max_length=3)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"payment {self.amount} {self.currency} for {self.claim_id}"


class PurchaseOrder(models.Model):
    idempotency_key = models.CharField(max_length=100, unique=True)
    sku = models.CharField(max_length=40)
    supplier = models.CharField(max_length=100)
    quantity = models.PositiveIntegerField()
    unit_price = models.DecimalField(max_digits=12, decimal_places=2)
    total = models.DecimalField(max_digits=14, decimal_places=2)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"PO {self.quantity} × {self.sku}"


class SentEmail(models.Model):
    idempotency_key = models.CharField(max_length=100, unique=True)
    to = models.EmailField()
    subject = models.CharField(max_length=200)
    body = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"e-mail to {self.to}"


class ApiKey(models.Model):
    """A remote agent's machine identity: `bk_<prefix>.<secret>`, shown once. Only a hash
    of the secret is kept; the prefix finds the key without revealing it."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True)
    secret_hash = models.CharField(max_length=64)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    # Not stored: live, expired or revoked (agents.catalog.agent_keys, for the page).
    state: str = "live"

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"bk_{self.prefix}… ({self.name})"


class WorkerBeat(models.Model):
    """A worker process's heartbeat: which workers are alive, and since when."""

    hostname = models.CharField(max_length=200, unique=True)
    pid = models.PositiveIntegerField()
    concurrency = models.PositiveIntegerField(default=1)
    started_at = models.DateTimeField()
    last_seen = models.DateTimeField()
    stopped_at = models.DateTimeField(null=True, blank=True)

    # Not stored: filled by agents.selectors.workers for the page.
    alive: bool = False
    runs: list[Any]

    class Meta:
        ordering = ["hostname"]

    def __str__(self) -> str:
        return self.hostname


class McpServer(models.Model):
    """An upstream MCP server whose tools an agent reaches through Baton's MCP gateway
    (agents.mcp): a command Baton starts (stdio) or a URL (Streamable HTTP). `tools` is
    the last listing fetched from it, kept so every process knows the tools' schemas
    (the approval page shows and checks them)."""

    class Transport(models.TextChoices):
        STDIO = "stdio", "stdio (a command Baton starts)"
        HTTP = "http", "Streamable HTTP (a URL)"

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="mcp_servers")
    name = models.CharField(max_length=40)
    transport = models.CharField(max_length=10, choices=Transport.choices)
    command = models.JSONField(default=list, blank=True)
    url = models.URLField(max_length=500, blank=True)
    enabled = models.BooleanField(default=True)
    tools = models.JSONField(default=list, blank=True)
    tools_fetched_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["agent", "name"]
        constraints = [
            models.UniqueConstraint(fields=["agent", "name"], name="mcp_server_name_per_agent"),
            models.CheckConstraint(
                condition=Q(transport="stdio", url="") | Q(transport="http", command=[]),
                name="mcp_server_command_or_url",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.transport})"


class AlertRule(models.Model):
    """A threshold on one metric of an agent or a team (agents.alerts holds the metrics and
    evaluates the rules). It fires when the measured value crosses `threshold` and
    resolves only once the value is back past `clear_threshold` (hysteresis); a rule that
    engages the breaker pauses its agent or team itself when it fires. The rule's state
    lives on its row, so a transition is one compare-and-set on it."""

    class Comparison(models.TextChoices):
        ABOVE = "above", "above"
        BELOW = "below", "below"

    class Basis(models.TextChoices):
        VALUE = "value", "the value"
        CHANGE = "change", "its change (this window ÷ the window before)"

    class State(models.TextChoices):
        RESOLVED = "resolved"
        FIRING = "firing"

    name = models.CharField(max_length=100)
    team = models.ForeignKey(
        Team, null=True, blank=True, on_delete=models.PROTECT, related_name="alert_rules"
    )
    agent = models.ForeignKey(
        Agent, null=True, blank=True, on_delete=models.PROTECT, related_name="alert_rules"
    )
    metric = models.CharField(max_length=40)
    basis = models.CharField(max_length=6, choices=Basis.choices, default=Basis.VALUE)
    comparison = models.CharField(
        max_length=5, choices=Comparison.choices, default=Comparison.ABOVE
    )
    threshold = models.FloatField()
    clear_threshold = models.FloatField()
    window_minutes = models.PositiveIntegerField(default=60)
    # Who is told: these addresses, and the supervisors of the agent or team if asked.
    notify_emails = models.TextField(blank=True)
    notify_supervisors = models.BooleanField(default=True)
    webhook_url = models.URLField(max_length=500, blank=True)
    engage_breaker = models.BooleanField(default=False)
    enabled = models.BooleanField(default=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    # The state, changed only by agents.alerts (compare-and-set on `state`).
    state = models.CharField(max_length=8, choices=State.choices, default=State.RESOLVED)
    state_since = models.DateTimeField(null=True, blank=True)
    last_value = models.FloatField(null=True, blank=True)
    last_evaluated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name", "pk"]
        constraints = [
            models.CheckConstraint(
                condition=Q(agent__isnull=True, team__isnull=False)
                | Q(agent__isnull=False, team__isnull=True),
                name="alert_rule_agent_xor_team",
            ),
            # Hysteresis: the value must come back past the clear threshold, which is on
            # the quiet side of the threshold (or equal to it: no hysteresis).
            models.CheckConstraint(
                condition=Q(comparison="above", clear_threshold__lte=models.F("threshold"))
                | Q(comparison="below", clear_threshold__gte=models.F("threshold")),
                name="alert_rule_clear_on_the_quiet_side",
            ),
            models.CheckConstraint(condition=Q(window_minutes__gte=1), name="alert_rule_window"),
            models.CheckConstraint(condition=~Q(name=""), name="alert_rule_needs_name"),
            # One rule of a name on an agent or a team, whatever its case: a form sent
            # twice (a double click, a resubmitted page) adds one rule, not two.
            models.UniqueConstraint(
                Lower("name"),
                F("agent"),
                condition=Q(agent__isnull=False),
                name="alert_rule_name_per_agent",
            ),
            models.UniqueConstraint(
                Lower("name"),
                F("team"),
                condition=Q(team__isnull=False),
                name="alert_rule_name_per_team",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class AlertEvent(models.Model):
    """One transition of an alert rule: fired or resolved, with the value measured."""

    rule = models.ForeignKey(AlertRule, on_delete=models.PROTECT, related_name="events")
    state = models.CharField(max_length=8, choices=AlertRule.State.choices)
    value = models.FloatField(null=True, blank=True)
    threshold = models.FloatField()
    at = models.DateTimeField(auto_now_add=True)
    # The pause the circuit breaker engaged on this firing, if it did.
    switch = models.ForeignKey(
        KillSwitch, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    note = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-at", "-pk"]
        indexes = [models.Index(fields=["rule", "-at"], name="alert_event_rule_recent")]

    def __str__(self) -> str:
        return f"{self.rule_id} {self.state}"


# --- The KPI rollup (agents.kpis, agents.rollup) ----------------------------------------
# Derived data, never a second source of truth: the additive KPI figures of each agent's
# runs per version and hour of their creation, written from the journal once every run
# created in that hour is final and its approval requests ended, and rebuilt from the
# journal at will (`manage.py kpi_rollup --rebuild`). The KPI pages read whole rolled-up
# hours here and everything else (the hours still open, a window's partial edge hours)
# from the journal, and add the two.


class KpiRollup(models.Model):
    """How far the rollup has looked (one row): every hour before `through` was examined,
    and each agent's runs of it are rolled up in KpiHour unless KpiOpenHour lists the
    agent and hour (a run not yet final, or a request not yet ended, then)."""

    through = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(null=True, blank=True)
    # A new one each time rows of hours already examined are written again (a rebuild), and
    # with the row (a database made anew): what a page kept of the rolled-up part of a
    # window holds for one generation only (agents.kpis.closed_part).
    generation = models.UUIDField(default=uuid.uuid4)

    def __str__(self) -> str:
        return f"KPI rollup through {self.through}"


class KpiHour(models.Model):
    """One agent version's runs created in one hour (UTC), added up; or in one whole day,
    once every hour of that day is rolled up for the agent (its hours' rows added, so a
    month is read from 30 rows an agent version, not 720). Each field is the count or sum
    agents.kpis.Figures has of the same name."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="+")
    version = models.ForeignKey(AgentVersion, on_delete=models.CASCADE, related_name="+")
    hour = models.DateTimeField()
    # 1: the hour starting at `hour`; 24: the whole day starting there, its hours added.
    hours = models.PositiveSmallIntegerField(default=1)
    runs = models.PositiveIntegerField(default=0)
    finished = models.PositiveIntegerField(default=0)
    succeeded = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    diverged = models.PositiveIntegerField(default=0)
    exceptions = models.PositiveIntegerField(default=0)
    steps = models.PositiveIntegerField(default=0)
    denied = models.PositiveIntegerField(default=0)
    shadow_differs = models.PositiveIntegerField(default=0)
    held = models.PositiveIntegerField(default=0)
    rejected = models.PositiveIntegerField(default=0)
    decided = models.PositiveIntegerField(default=0)
    expired = models.PositiveIntegerField(default=0)
    model_calls = models.PositiveIntegerField(default=0)
    tokens_in = models.BigIntegerField(default=0)
    tokens_out = models.BigIntegerField(default=0)
    cost_eur = models.FloatField(default=0.0)
    ordered = models.DecimalField(max_digits=20, decimal_places=2, default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["agent", "version", "hour", "hours"], name="kpi_hour_unique"
            )
        ]
        # A window of many agents reads its hours by time (the unique index serves one
        # agent's): its day rows apart from its hour rows, so a month's day rows are read
        # without the 700 hour rows of each day beside them.
        indexes = [models.Index(fields=["hours", "hour"], name="kpi_hour_span_hour")]

    def __str__(self) -> str:
        return f"KPIs of {self.version_id} at {self.hour}"


class KpiHourPaid(models.Model):
    """What an hour's runs of an agent version paid, in one currency."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="+")
    version = models.ForeignKey(AgentVersion, on_delete=models.CASCADE, related_name="+")
    hour = models.DateTimeField()
    # 1: the hour starting at `hour`; 24: the whole day starting there, its hours added.
    hours = models.PositiveSmallIntegerField(default=1)
    currency = models.CharField(max_length=3)
    amount = models.DecimalField(max_digits=20, decimal_places=2)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["agent", "version", "hour", "hours", "currency"],
                name="kpi_hour_paid_unique",
            )
        ]
        indexes = [models.Index(fields=["hours", "hour"], name="kpi_hour_paid_span_hour")]

    def __str__(self) -> str:
        return f"{self.amount} {self.currency} paid by {self.version_id} at {self.hour}"


class KpiHourWait(models.Model):
    """How many of an hour's requests people decided within `minutes` whole minutes and
    not within one less (the wait rounded up): decided within an SLA of m minutes is the
    sum over minutes <= m, so the agent's target may change after the hour was rolled up."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="+")
    version = models.ForeignKey(AgentVersion, on_delete=models.CASCADE, related_name="+")
    hour = models.DateTimeField()
    # 1: the hour starting at `hour`; 24: the whole day starting there, its hours added.
    hours = models.PositiveSmallIntegerField(default=1)
    minutes = models.PositiveIntegerField()
    decided = models.PositiveIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["agent", "version", "hour", "hours", "minutes"], name="kpi_hour_wait_unique"
            )
        ]
        indexes = [models.Index(fields=["hours", "hour"], name="kpi_hour_wait_span_hour")]

    def __str__(self) -> str:
        return f"{self.decided} decided in {self.minutes} min for {self.version_id}"


class KpiOpenHour(models.Model):
    """An hour before KpiRollup.through not rolled up for an agent: one of its runs of that
    hour was not final, or a request of theirs not ended, when it was last examined. The
    KPIs read it from the journal; the rollup examines it again on each round."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="+")
    hour = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["agent", "hour"], name="kpi_open_hour_unique")
        ]
        indexes = [models.Index(fields=["hour"], name="kpi_open_hour_hour")]

    def __str__(self) -> str:
        return f"{self.hour} open for agent {self.agent_id}"
