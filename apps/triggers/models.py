"""Triggers (event types), webhooks, sensors and events (SPEC §4)."""
from __future__ import annotations

from django.conf import settings
from django.db import models

from apps.core.models import PackComponent, TimestampedModel


class Trigger(PackComponent):
    payload_schema = models.JSONField(default=dict, blank=True)
    parameters_schema = models.JSONField(default=dict, blank=True)
    enabled = models.BooleanField(default=True)
    system = models.BooleanField(default=False, help_text="Emitted by Attune itself (timers, execution_completed).")


class Webhook(TimestampedModel):
    """The webhook receiver of one trigger. Only the key's hash is stored; the key is shown once."""

    trigger = models.OneToOneField(Trigger, on_delete=models.CASCADE, related_name="webhook")
    key_hash = models.CharField(max_length=64, unique=True)
    key_prefix = models.CharField(max_length=12, blank=True, default="")
    hmac_secret_encrypted = models.TextField(blank=True, default="", help_text="AES-256-GCM, never shown.")
    allowed_cidrs = models.JSONField(default=list, blank=True)
    max_payload_bytes = models.PositiveIntegerField(null=True, blank=True)
    rate_limit_per_minute = models.PositiveIntegerField(null=True, blank=True)
    enabled = models.BooleanField(default=True)
    last_received_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"webhook for {self.trigger.ref}"

    def pack_ref_for_permissions(self) -> str:
        return self.trigger.pack.ref


class SensorMode(models.TextChoices):
    DAEMON = "daemon"
    POLL = "poll"


class SensorState(models.TextChoices):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff", "crashed, waiting to restart"
    DISABLED = "disabled"


class Sensor(PackComponent):
    runner_type = models.ForeignKey(
        "packs.Runtime", to_field="name", db_column="runner_type", on_delete=models.PROTECT, related_name="sensors"
    )
    entry_point = models.CharField(max_length=1024)
    trigger_types = models.ManyToManyField(Trigger, related_name="sensors", blank=True)
    mode = models.CharField(max_length=8, choices=SensorMode.choices, default=SensorMode.DAEMON)
    poll_interval = models.PositiveIntegerField(null=True, blank=True, help_text="Seconds, for poll mode.")
    enabled = models.BooleanField(default=True)
    # Supervisor-reported status.
    state = models.CharField(max_length=16, choices=SensorState.choices, default=SensorState.STOPPED)
    pid = models.IntegerField(null=True, blank=True)
    host = models.CharField(max_length=255, blank=True, default="")
    restarts = models.PositiveIntegerField(default=0)
    last_started_at = models.DateTimeField(null=True, blank=True)
    last_exit_code = models.IntegerField(null=True, blank=True)
    last_stderr = models.TextField(blank=True, default="", help_text="Last lines the sensor wrote to stderr.")
    next_start_at = models.DateTimeField(null=True, blank=True)


class EventStatus(models.TextChoices):
    RECEIVED = "received", "received, not yet matched"
    PROCESSED = "processed", "matched against rules"
    INVALID = "invalid", "payload violates the trigger's schema; not matched"


class Event(models.Model):
    """One occurrence of a trigger. Append-only: the payload never changes after creation."""

    trigger = models.ForeignKey(Trigger, null=True, on_delete=models.SET_NULL, related_name="events")
    trigger_ref = models.CharField(max_length=256)
    payload = models.JSONField(default=dict, blank=True)
    meta = models.JSONField(default=dict, blank=True, help_text="Source address, headers, sensor, rule (timers).")
    status = models.CharField(max_length=16, choices=EventStatus.choices, default=EventStatus.RECEIVED)
    error = models.TextField(blank=True, default="", help_text="Why the event is invalid.")
    emitted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    source_event = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="re_emits",
        help_text="The event this one re-emits.",
    )
    created = models.DateTimeField(auto_now_add=True, db_index=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    redispatched_at = models.DateTimeField(null=True, blank=True, help_text="Last re-send to matching (recovery).")

    class Meta:
        ordering = ["-id"]
        # Written for every event: the composites serve the filters on their leading columns too.
        indexes = [models.Index(fields=["trigger_ref", "created"]), models.Index(fields=["status", "id"])]

    def __str__(self) -> str:
        return f"event #{self.pk} {self.trigger_ref}"

    def pack_ref_for_permissions(self) -> str:
        return self.trigger_ref.split(".", 1)[0]
