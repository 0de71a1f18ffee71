"""Executions, their output, policies and workers (SPEC §2, §6).

Executions reference enforcements, rules and events by string model references only: the executions
layer never imports the higher layers' code.
"""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from apps.core.models import PackComponent, TimestampedModel
from apps.core.statuses import ACTIVE, TERMINAL, ExecutionStatus


class Worker(TimestampedModel):
    class State(models.TextChoices):
        ONLINE = "online"
        STOPPING = "stopping"
        OFFLINE = "offline"
        DEAD = "dead"  # heartbeat went stale

    name = models.CharField(max_length=255, unique=True, help_text="hostname:pid:suffix")
    hostname = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    queues = models.JSONField(default=list, blank=True)
    runtimes = models.JSONField(default=list, blank=True)
    concurrency = models.PositiveIntegerField(default=1)
    running = models.PositiveIntegerField(default=0)
    state = models.CharField(max_length=16, choices=State.choices, default=State.ONLINE, db_index=True)
    mode = models.CharField(max_length=16, default="embedded")
    started_at = models.DateTimeField(default=timezone.now)
    last_heartbeat = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-last_heartbeat"]

    def __str__(self) -> str:
        return self.name


class Execution(TimestampedModel):
    action = models.ForeignKey("actions.Action", null=True, on_delete=models.SET_NULL, related_name="executions")
    action_ref = models.CharField(max_length=256, help_text="Kept when the action is deleted.")
    pack_ref = models.CharField(max_length=128)
    runner_type = models.CharField(max_length=64, blank=True, default="")
    status = models.CharField(
        max_length=16, choices=ExecutionStatus.choices, default=ExecutionStatus.REQUESTED
    )
    parameters = models.JSONField(default=dict, blank=True, help_text="Secret parameters stored redacted.")
    secret_parameters = models.TextField(
        blank=True, default="", help_text="The real values of secret parameters, AES-256-GCM encrypted."
    )
    result = models.JSONField(null=True, blank=True)
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE, related_name="children",
                               db_index=False)
    original = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="reruns",
        help_text="The execution this one re-runs.",
    )
    enforcement = models.ForeignKey(
        "rules.Enforcement", null=True, blank=True, on_delete=models.SET_NULL, related_name="executions"
    )
    rule = models.ForeignKey("rules.Rule", null=True, blank=True, on_delete=models.SET_NULL, related_name="executions")
    trigger_event = models.ForeignKey(
        "triggers.Event", null=True, blank=True, on_delete=models.SET_NULL, related_name="executions"
    )
    started_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="executions"
    )
    worker = models.ForeignKey(Worker, null=True, blank=True, on_delete=models.SET_NULL, related_name="executions")
    # Workflow linkage (a soft reference: the workflows layer owns TaskExecution).
    task_name = models.CharField(max_length=128, blank=True, default="")
    task_execution_id = models.BigIntegerField(null=True, blank=True)
    item_index = models.IntegerField(null=True, blank=True)
    task_reported = models.BooleanField(
        default=False, help_text="The workflow conductor has counted this child's end (exactly once).")
    # Scheduling and policy state.
    queue = models.CharField(max_length=64, blank=True, default="")
    run_after = models.DateTimeField(null=True, blank=True, db_index=True, help_text="Not before (retries).")
    queued_at = models.DateTimeField(null=True, blank=True, help_text="When it entered a policy queue.")
    waiting_reason = models.CharField(max_length=512, blank=True, default="")
    policy = models.ForeignKey("executions.Policy", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    policy_key = models.CharField(
        max_length=512, blank=True, default="",
        help_text="The values of the governing concurrency policy's attributes (canonical JSON): its FIFO queue.",
    )
    attempt = models.PositiveIntegerField(default=0, help_text="Delivery attempts (poison-message guard).")
    retry_count = models.PositiveIntegerField(default=0, help_text="Policy retries that led here.")
    timeout = models.PositiveIntegerField(null=True, blank=True, help_text="Seconds; overrides the action's.")
    cancel_requested = models.BooleanField(default=False)
    pid = models.IntegerField(null=True, blank=True)
    stdout_size = models.BigIntegerField(default=0)
    stderr_size = models.BigIntegerField(default=0)
    scheduled_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        # Every INSERT and every status change (never a HOT update: status is indexed) writes each index, so
        # a column that leads a composite index has no index of its own, and no text column has the extra
        # pattern-ops (LIKE) index Django adds for db_index=True: nothing filters them by prefix.
        indexes = [
            models.Index(fields=["status", "created"]),
            models.Index(fields=["action_ref", "status"]),
            models.Index(fields=["pack_ref", "created"]),
            models.Index(fields=["parent", "task_name"]),
            models.Index(fields=["task_execution_id", "item_index"]),
            models.Index(fields=["policy_key"], name="exec_policy_key"),
            models.Index(fields=["finished_at"], name="exec_unreported_child",
                         condition=models.Q(task_reported=False, task_execution_id__isnull=False)),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.action_ref} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE

    @property
    def duration_ms(self) -> int | None:
        if self.started_at is None:
            return None
        end = self.finished_at or (None if self.is_terminal else timezone.now())
        if end is None:
            return None
        return int((end - self.started_at).total_seconds() * 1000)

    def pack_ref_for_permissions(self) -> str:
        return self.pack_ref


class OutputStream(models.TextChoices):
    STDOUT = "stdout"
    STDERR = "stderr"


class OutputChunk(models.Model):
    """Output as it is produced: ``offset`` is the byte offset of ``data`` within its stream."""

    execution = models.ForeignKey(Execution, on_delete=models.CASCADE, related_name="output_chunks")
    stream = models.CharField(max_length=8, choices=OutputStream.choices)
    offset = models.BigIntegerField()
    data = models.TextField()
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["execution", "stream", "offset"]
        constraints = [
            models.UniqueConstraint(fields=["execution", "stream", "offset"], name="uniq_output_chunk_offset")
        ]

    def __str__(self) -> str:
        return f"{self.stream}@{self.offset} of execution {self.execution_id}"


class Artifact(TimestampedModel):
    """A named file or blob an execution produced (reports, logs, diffs)."""

    execution = models.ForeignKey(Execution, on_delete=models.CASCADE, related_name="artifacts")
    name = models.CharField(max_length=255)
    content_type = models.CharField(max_length=128, default="application/octet-stream")
    size = models.BigIntegerField(default=0)
    path = models.CharField(max_length=1024, blank=True, default="", help_text="File under ATTUNE_HOME/artifacts.")
    data = models.TextField(blank=True, default="", help_text="Small text artifacts stored inline.")

    class Meta:
        ordering = ["-created"]
        constraints = [models.UniqueConstraint(fields=["execution", "name"], name="uniq_artifact_execution_name")]

    def __str__(self) -> str:
        return f"{self.execution_id}/{self.name}"

    def pack_ref_for_permissions(self) -> str:
        return self.execution.pack_ref


class PolicyType(models.TextChoices):
    CONCURRENCY = "concurrency"
    RATE_LIMIT = "rate_limit"
    RETRY = "retry"


class OnLimit(models.TextChoices):
    DELAY = "delay"
    CANCEL = "cancel"


class Backoff(models.TextChoices):
    CONSTANT = "constant"
    LINEAR = "linear"
    EXPONENTIAL = "exponential"


class Policy(PackComponent):
    pack = models.ForeignKey("packs.Pack", on_delete=models.CASCADE, related_name="policies")
    action = models.ForeignKey("actions.Action", on_delete=models.CASCADE, related_name="policies")
    type = models.CharField(max_length=16, choices=PolicyType.choices)
    enabled = models.BooleanField(default=True)
    # concurrency
    threshold = models.PositiveIntegerField(null=True, blank=True)
    attributes = models.JSONField(default=list, blank=True)
    on_limit = models.CharField(max_length=8, choices=OnLimit.choices, default=OnLimit.DELAY)
    # rate_limit
    limit = models.PositiveIntegerField(null=True, blank=True)
    window_seconds = models.PositiveIntegerField(null=True, blank=True)
    # retry
    on = models.JSONField(default=list, blank=True, help_text="Subset of [failure, timeout].")
    max_retries = models.PositiveIntegerField(null=True, blank=True)
    delay_seconds = models.FloatField(null=True, blank=True)
    backoff = models.CharField(max_length=16, choices=Backoff.choices, default=Backoff.CONSTANT)

    class Meta(PackComponent.Meta):
        verbose_name_plural = "policies"
        indexes = [models.Index(fields=["action", "type"])]
