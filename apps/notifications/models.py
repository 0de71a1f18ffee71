"""The notification log of the first design — no longer written.

It stored one row per message and used the row id as ``seq``. Live notifications now write nothing to the
database (a status change is already in ``Execution``, output in ``OutputChunk``): see
apps/notifications/transport.py for where ``seq`` comes from, and docs/notifications.md. The model stays
(and its admin page shows whatever old rows exist) until its table is dropped together with its uses in
tests/factories.py and tests/test_admin.py.
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
