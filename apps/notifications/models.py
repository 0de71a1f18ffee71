"""The durable log behind live notifications.

Durable before live: a change is written here (with a monotonically increasing id used as ``seq``),
then pushed to WebSocket subscribers as a hint. A client that missed messages re-reads from its last seq.
"""
from __future__ import annotations

from django.db import models


class Notification(models.Model):
    topic = models.CharField(max_length=128, db_index=True, help_text="e.g. execution:42, executions, inquiries")
    type = models.CharField(max_length=64, help_text="e.g. execution.status, execution.output, inquiry.created")
    object_id = models.BigIntegerField(null=True, blank=True)
    pack_ref = models.CharField(max_length=128, blank=True, default="")
    payload = models.JSONField(default=dict, blank=True)
    created = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["topic", "id"])]

    def __str__(self) -> str:
        return f"{self.type} {self.topic} #{self.pk}"
