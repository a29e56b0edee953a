from __future__ import annotations

from django.db import models


class AuditEvent(models.Model):
    """One append-only, hash-chained record of a state change (DESIGN section 7).

    References to agents, runs and people are plain ids plus labels, not foreign keys:
    the trail must outlive and never be altered by what it describes.
    """

    class ActorType(models.TextChoices):
        USER = "user"
        AGENT = "agent"
        SYSTEM = "system"

    seq = models.BigIntegerField(unique=True)
    occurred_at = models.DateTimeField()
    actor_type = models.CharField(max_length=6, choices=ActorType.choices)
    actor_id = models.BigIntegerField(null=True, blank=True)
    actor_label = models.CharField(max_length=150)
    verb = models.CharField(max_length=40)
    subject_type = models.CharField(max_length=40)
    subject_id = models.CharField(max_length=64)
    agent_id = models.BigIntegerField(null=True, blank=True)
    team_id = models.BigIntegerField(null=True, blank=True)
    run_id = models.BigIntegerField(null=True, blank=True)
    payload = models.JSONField(default=dict)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)

    class Meta:
        ordering = ["-seq"]
        indexes = [
            models.Index(fields=["agent_id", "-seq"], name="audit_agent_seq"),
            models.Index(fields=["run_id", "seq"], name="audit_run_seq"),
            models.Index(fields=["verb", "-seq"], name="audit_verb_seq"),
        ]

    def __str__(self) -> str:
        return f"#{self.seq} {self.verb}"


class ChainHead(models.Model):
    """The single row every audit writer locks to take the next sequence number."""

    seq = models.BigIntegerField(default=0)
    hash = models.CharField(max_length=64)

    def __str__(self) -> str:
        return f"head #{self.seq}"
