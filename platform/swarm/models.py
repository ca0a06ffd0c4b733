"""What the portal knows about each project's swarm: nodes, credentials, telemetry and observations.

The DHT is the truth about what is served; these rows record what agents reported (heartbeats, metrics),
what the observer saw in the DHT, and what the portal decided (credentials, bans, node states).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from projects.models import Project


class NodeState(models.TextChoices):
    PENDING = "pending", "Awaiting approval"
    REGISTERED = "registered", "Registered"
    ONLINE = "online", "Online"
    UNREACHABLE = "unreachable", "Unreachable"
    OFFLINE = "offline", "Offline"
    BANNED = "banned", "Banned"


class ProbeState(models.TextChoices):
    """What the observer's last `info` probe of a node's experts found (swarm.observer)."""

    NOT_PROBED = "", "Not probed"
    UNREACHABLE = "unreachable", "Announced, not reachable"
    REACHABLE = "reachable", "Reachable, not serving"
    SERVING = "serving", "Serving"


class ProjectSwarm(models.Model):
    """Per-project swarm settings plus the observer's latest view of the project's DHT."""

    project = models.OneToOneField(Project, on_delete=models.CASCADE, related_name="swarm")
    bootstrap_peers = models.JSONField(
        default=list, blank=True, help_text='Always-on DHT peers, "host:port" or "host:port/<node id hex>".'
    )
    gated = models.BooleanField(
        default=False, help_text="Peers refuse expert announcements without a valid portal credential."
    )
    observed_at = models.DateTimeField(null=True, blank=True)
    observation_error = models.CharField(max_length=300, blank=True)
    coverage = models.JSONField(default=dict, blank=True, help_text="expert uid -> live replicas (DHT).")
    announced = models.JSONField(default=dict, blank=True, help_text="node id hex -> uids it announces.")
    announced_cells = models.PositiveIntegerField(
        default=0, help_text="Grid cells some node announces (coverage counts only the served ones)."
    )

    def __str__(self) -> str:
        return f"swarm of {self.project.slug}"


class UserBan(models.Model):
    """A user banned from every swarm: their nodes are banned and new join codes are refused."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="swarm_ban")
    reason = models.CharField(max_length=200, blank=True)
    banned_at = models.DateTimeField(default=timezone.now)


class Node(models.Model):
    """One node key in one project, owned by the volunteer who joined it."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="nodes")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="nodes")
    public_key = models.CharField(max_length=64)
    node_id = models.CharField(max_length=40, db_index=True)
    state = models.CharField(max_length=16, choices=NodeState.choices, default=NodeState.REGISTERED)
    state_changed_at = models.DateTimeField(default=timezone.now)
    state_reason = models.CharField(max_length=200, blank=True)
    approved_at = models.DateTimeField(null=True, blank=True)
    role = models.CharField(max_length=16, blank=True)
    endpoint = models.CharField(max_length=255, blank=True)
    agent_version = models.CharField(max_length=64, blank=True)
    platform = models.CharField(max_length=128, blank=True)
    experts = models.JSONField(default=list, blank=True, help_text="Experts the node says it serves.")
    announced_experts = models.JSONField(default=list, blank=True, help_text="Experts seen in the DHT.")
    peers = models.JSONField(default=list, blank=True)
    replica_states = models.JSONField(
        default=list, blank=True, help_text="[{uid, step, averaged_age_s}] from the last heartbeat."
    )
    averaging_rounds_completed = models.BigIntegerField(default=0)
    averaging_rounds_failed = models.BigIntegerField(default=0)
    requests = models.BigIntegerField(default=0)
    samples = models.BigIntegerField(default=0)
    failures = models.BigIntegerField(default=0)
    bytes_in = models.BigIntegerField(default=0)
    bytes_out = models.BigIntegerField(default=0)
    samples_per_s = models.FloatField(default=0.0)
    uptime_s = models.FloatField(default=0.0)
    last_heartbeat_at = models.DateTimeField(null=True, blank=True)
    last_seen_in_dht_at = models.DateTimeField(null=True, blank=True)
    probe_state = models.CharField(max_length=16, choices=ProbeState.choices, default="", blank=True)
    probed_at = models.DateTimeField(null=True, blank=True)
    probe_reason = models.CharField(max_length=200, blank=True, help_text="Why the last probe failed.")
    serving_experts = models.JSONField(default=list, blank=True, help_text="Experts that answered the probe.")
    rate_tokens = models.FloatField(null=True, blank=True)
    rate_updated_at = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["project_id", "-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["project", "public_key"], name="swarm_node_key_per_project")
        ]

    def __str__(self) -> str:
        return f"node {self.node_id[:12]} in {self.project_id}"

    @property
    def short_id(self) -> str:
        return self.node_id[:12]


class NodeStateChange(models.Model):
    """Every lifecycle change with its time and why, so the history of a node can be read back."""

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="state_changes")
    previous = models.CharField(max_length=16, choices=NodeState.choices, blank=True)
    state = models.CharField(max_length=16, choices=NodeState.choices)
    reason = models.CharField(max_length=200, blank=True)
    at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-at", "-pk"]


class CodePurpose(models.TextChoices):
    JOIN = "join", "Join page (a volunteer's node)"
    TRAIN = "train", "Train page (the owner's trainer)"


class JoinCode(models.Model):
    """A short-lived one-time code shown on the Join or the Train page; only its hash is stored."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="join_codes")
    purpose = models.CharField(max_length=8, choices=CodePurpose.choices, default=CodePurpose.JOIN)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="join_codes")
    code_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)
    node = models.ForeignKey(Node, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")


class IssuedCredential(models.Model):
    """A credential the portal signed; revoking one puts its id on the project's DHT revocation list."""

    cid = models.CharField(max_length=64, unique=True)
    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="credentials")
    issued_at = models.DateTimeField()
    expires_at = models.DateTimeField(db_index=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-issued_at"]


class SeenNonce(models.Model):
    """Nonces of accepted signed bodies, kept a little longer than the clock-skew window (replays)."""

    public_key = models.CharField(max_length=64)
    nonce = models.CharField(max_length=64)
    seen_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["public_key", "nonce"], name="swarm_nonce_once")]


class HeartbeatSample(models.Model):
    """A raw heartbeat's counters (totals since agent start); rolled up into buckets, then pruned."""

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="heartbeats")
    received_at = models.DateTimeField(db_index=True)
    requests = models.BigIntegerField()
    samples = models.BigIntegerField()
    failures = models.BigIntegerField()
    bytes_in = models.BigIntegerField()
    bytes_out = models.BigIntegerField()
    samples_per_s = models.FloatField()
    uptime_s = models.FloatField()
    rolled_up = models.BooleanField(default=False)

    class Meta:
        ordering = ["node_id", "received_at"]


class ContributionBucket(models.Model):
    """What a node did in one time bucket (deltas of its counters), for contribution-over-time charts."""

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="buckets")
    start = models.DateTimeField()
    seconds = models.PositiveIntegerField()
    requests = models.BigIntegerField(default=0)
    samples = models.BigIntegerField(default=0)
    failures = models.BigIntegerField(default=0)
    bytes_in = models.BigIntegerField(default=0)
    bytes_out = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["node_id", "start"]
        constraints = [models.UniqueConstraint(fields=["node", "start", "seconds"], name="swarm_bucket_once")]


class TrainingMetric(models.Model):
    """One training metrics point reported by a trainer node."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="training_metrics")
    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="training_metrics")
    run = models.CharField(
        max_length=32, blank=True, default="", help_text="The trainer run ('' from agents that send none)."
    )
    kind = models.CharField(max_length=8, default="train")
    step = models.PositiveIntegerField()
    loss = models.FloatField()
    accuracy = models.FloatField()
    #: A language model's bits per byte (validation bits per byte on `eval` points); null for classifiers.
    bits_per_byte = models.FloatField(null=True, blank=True)
    samples_per_s = models.FloatField()
    experts_answered = models.PositiveIntegerField()
    experts_failed = models.PositiveIntegerField()
    timestamp = models.DateTimeField()
    received_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["project_id", "timestamp"]
        indexes = [
            models.Index(fields=["project", "-received_at"]),
            # A run's last step per kind, read on every metrics body (steps stay monotonic per run).
            models.Index(fields=["node", "run", "kind", "step"], name="swarm_metric_run_step"),
        ]


class AlertSeverity(models.TextChoices):
    INFO = "info", "Info"
    WARNING = "warning", "Warning"
    CRITICAL = "critical", "Critical"


class Alert(models.Model):
    """A condition worth an admin's attention; raised once per `key`, resolved when it clears."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="swarm_alerts")
    node = models.ForeignKey(Node, on_delete=models.CASCADE, null=True, blank=True, related_name="alerts")
    key = models.CharField(max_length=120)
    kind = models.CharField(max_length=40)
    severity = models.CharField(max_length=10, choices=AlertSeverity.choices, default=AlertSeverity.WARNING)
    message = models.CharField(max_length=300)
    raised_at = models.DateTimeField(default=timezone.now)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-raised_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["project", "key"],
                condition=models.Q(resolved_at__isnull=True),
                name="swarm_alert_open_once",
            )
        ]


class ProjectExport(models.Model):
    """A model export (`node-agent export --upload`) the project owner's agent uploaded; the file lives in
    `settings.EXPORTS_DIR`/<project slug>/<sha256>.safetensors."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="exports")
    node = models.ForeignKey(Node, on_delete=models.SET_NULL, null=True, related_name="exports")
    uploaded_at = models.DateTimeField()
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)

    class Meta:
        ordering = ["project_id", "-uploaded_at"]

    def __str__(self) -> str:
        return f"export {self.sha256[:12]} of {self.project_id}"
