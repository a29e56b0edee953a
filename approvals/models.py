from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import F, Q

from agents.policy import DEFAULT_ON_TIMEOUT


class ApprovalRequest(models.Model):
    """A held action waiting for people. Bound to the exact action it holds."""

    class Status(models.TextChoices):
        PENDING = "pending"
        APPROVED = "approved"
        REJECTED = "rejected"
        EXPIRED = "expired"
        CANCELLED = "cancelled"

    class Kind(models.TextChoices):
        POLICY = "policy", "held by policy"
        UNKNOWN_OUTCOME = "unknown", "outcome unknown after a crash"

    action = models.OneToOneField(
        "agents.Action", on_delete=models.PROTECT, related_name="approval_request"
    )
    run = models.ForeignKey("agents.Run", on_delete=models.PROTECT, related_name="+")
    agent = models.ForeignKey("agents.Agent", on_delete=models.PROTECT, related_name="+")
    version = models.ForeignKey("agents.AgentVersion", on_delete=models.PROTECT, related_name="+")
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.POLICY)
    tool = models.CharField(max_length=100)
    args = models.JSONField()
    args_hash = models.CharField(max_length=64)
    risk = models.CharField(max_length=10)
    rule_index = models.IntegerField(null=True, blank=True)
    rule = models.JSONField(null=True, blank=True)
    required_approvals = models.PositiveSmallIntegerField(default=1)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    on_timeout = models.CharField(max_length=10, default=DEFAULT_ON_TIMEOUT)
    due_at = models.DateTimeField(null=True, blank=True)
    escalation_level = models.PositiveSmallIntegerField(default=0)
    # The approver group the request has escalated to (from the rule's escalate_to); its
    # members may see and decide it besides the agent's supervisors.
    escalated_to = models.CharField(max_length=150, blank=True)
    # The rule's approver group (its `approvers`): when set, only the agent's supervisors
    # who belong to it decide (approvals.selectors.decidable_by).
    approver_group = models.CharField(max_length=150, blank=True)
    # Who may not approve: the person who launched the run, and the author of the policy
    # version in force. Copied here so the database itself can refuse such a decision.
    launched_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.PROTECT, related_name="+"
    )
    policy_author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["status", "due_at"], name="approval_status_due"),
            # The KPIs read a window's requests by their creation (agents.kpis): held, and
            # the decided ones' times, from the index alone.
            models.Index(
                fields=["created_at"],
                include=("status", "decided_at", "run"),
                name="approval_created_decided",
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(required_approvals__gte=1), name="approval_needs_one_or_more"
            ),
        ]

    def __str__(self) -> str:
        return f"approval {self.pk} for {self.tool}"


class ApprovalDecision(models.Model):
    class Verdict(models.TextChoices):
        APPROVE = "approve"
        REJECT = "reject"

    request = models.ForeignKey(ApprovalRequest, on_delete=models.PROTECT, related_name="decisions")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    verdict = models.CharField(max_length=7, choices=Verdict.choices)
    comment = models.TextField(blank=True)
    edited_args = models.JSONField(null=True, blank=True)
    # The hash of the arguments the decider saw: a decision binds to exactly that action.
    args_hash = models.CharField(max_length=64)
    launched_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.PROTECT, related_name="+"
    )
    policy_author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at"]
        constraints = [
            # A person decides an action once; after an edit, the edited action is a new
            # one (another hash), which they may decide again.
            models.UniqueConstraint(
                fields=["request", "user", "args_hash"], name="one_decision_per_person"
            ),
            # Four-eyes in the database: nobody decides their own run or their own policy.
            models.CheckConstraint(
                condition=(
                    (Q(launched_by__isnull=True) | ~Q(user=F("launched_by")))
                    & (Q(policy_author__isnull=True) | ~Q(user=F("policy_author")))
                ),
                name="decider_is_not_launcher_or_author",
            ),
            models.CheckConstraint(
                condition=Q(verdict="approve") | ~Q(comment=""), name="rejection_needs_reason"
            ),
            models.CheckConstraint(
                condition=Q(verdict__in=["approve", "reject"]), name="decision_verdict_known"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.verdict} by {self.user_id}"


class PublishRequest(models.Model):
    """A publish waiting for a second admin (four-eyes on policy, Team.
    publish_needs_second_admin). Bound to the exact content of the version it would
    publish: `content_hash` (approvals.publish.version_content_hash) is taken when it is
    asked for and checked again when it is approved."""

    class Status(models.TextChoices):
        PENDING = "pending"
        APPROVED = "approved"
        REJECTED = "rejected"

    agent = models.ForeignKey("agents.Agent", on_delete=models.PROTECT, related_name="+")
    version = models.ForeignKey(
        "agents.AgentVersion", on_delete=models.PROTECT, related_name="publish_requests"
    )
    content_hash = models.CharField(max_length=64)
    live = models.BooleanField(default=True)
    reason = models.TextField()
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    comment = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # Four-eyes in the database: whoever asked to publish never decides it.
            models.CheckConstraint(
                condition=Q(decided_by__isnull=True) | ~Q(decided_by=F("requested_by")),
                name="publish_decider_is_not_requester",
            ),
            models.CheckConstraint(condition=~Q(reason=""), name="publish_needs_reason"),
            models.CheckConstraint(
                condition=~Q(status="rejected") | ~Q(comment=""),
                name="publish_rejection_needs_reason",
            ),
            models.CheckConstraint(
                condition=Q(status="pending") | Q(decided_by__isnull=False),
                name="publish_decided_by_someone",
            ),
            # One open request per version: a second would be decided twice.
            models.UniqueConstraint(
                fields=["version"],
                condition=Q(status="pending"),
                name="publish_one_pending_per_version",
            ),
        ]

    def __str__(self) -> str:
        return f"publish request {self.pk} for version {self.version_id}"
