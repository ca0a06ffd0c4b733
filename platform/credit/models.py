"""Credit the portal granted for verified work receipts (`node_agent.credit.receipts`), and what it refused.

Credit is priced by the portal (FLOPs per sample of the project's expert class times the samples), never
taken from a number a node reports. Units: FLOPs, stored as floats (sums of months of work exceed 2**63).
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from projects.models import Project
from swarm.models import Node


class WorkReceipt(models.Model):
    """One accepted receipt: a trainer's signed account of one server's work in one minute."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="work_receipts")
    # No index of their own: (server, minute) and the unique (trainer, server, minute) lead with them, and
    # every index costs each heartbeat's insert.
    server = models.ForeignKey(Node, models.CASCADE, related_name="receipts_served", db_index=False)
    trainer = models.ForeignKey(Node, models.CASCADE, related_name="receipts_granted", db_index=False)
    cid = models.CharField(max_length=64)
    minute = models.BigIntegerField(help_text="unix time // 60")
    forward = models.BigIntegerField()
    backward = models.BigIntegerField()
    answers = models.BigIntegerField()
    first_nonce = models.CharField(max_length=32)
    last_nonce = models.CharField(max_length=32)
    chain = models.CharField(max_length=64)
    claimed_flops = models.FloatField(help_text="what the samples would be worth uncapped")
    flops = models.FloatField(help_text="credit granted after the limits")
    received_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["trainer", "server", "minute"], name="credit_receipt_once")
        ]
        indexes = [models.Index(fields=["server", "minute"])]


class NodeCredit(models.Model):
    """A node's credit: the total and the recent credit (decayed with a one-week half-life, `rac`)."""

    node = models.OneToOneField(Node, on_delete=models.CASCADE, related_name="credit")
    total = models.FloatField(default=0.0)
    recent = models.FloatField(default=0.0, help_text="decayed sum at recent_at (see credit.rac)")
    recent_at = models.DateTimeField(default=timezone.now)


class PairCredit(models.Model):
    """Credit one trainer granted one server (the per-trainer share cap reads it)."""

    server = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="+")
    trainer = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="+")
    flops = models.FloatField(default=0.0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["server", "trainer"], name="credit_pair_once")]


class TrainerProgress(models.Model):
    """What a trainer reported it trained (heartbeat samples, summed over restarts) and what it granted."""

    node = models.OneToOneField(Node, on_delete=models.CASCADE, related_name="progress")
    reported_samples = models.BigIntegerField(default=0)
    last_heartbeat_samples = models.BigIntegerField(default=0)
    granted_samples = models.BigIntegerField(default=0)


class CreditRefusal(models.Model):
    """How many receipts (or parts of them) were refused, per project, uploading server and reason."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="credit_refusals")
    server = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="credit_refusals")
    reason = models.CharField(max_length=32)
    count = models.BigIntegerField(default=0)
    last_at = models.DateTimeField(default=timezone.now)
    last_detail = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-last_at"]
        constraints = [
            models.UniqueConstraint(fields=["project", "server", "reason"], name="credit_refusal_once")
        ]


class Team(models.Model):
    """A team volunteers create and join; its credit is its members' (while they are members)."""

    name = models.CharField(max_length=80, unique=True)
    founder = models.ForeignKey("accounts.User", on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class CreditProfile(models.Model):
    """What a volunteer chose to show on leaderboards and in stats exports (anonymous unless they opt in),
    and the team they joined, if any."""

    user = models.OneToOneField("accounts.User", on_delete=models.CASCADE, related_name="credit_profile")
    public_name = models.BooleanField(default=False, help_text="Show my display name; otherwise anonymous.")
    team = models.ForeignKey(Team, on_delete=models.SET_NULL, null=True, blank=True, related_name="members")
