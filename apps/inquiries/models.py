"""Inquiries: a question to a person that pauses an execution (SPEC §9)."""
from __future__ import annotations

from django.conf import settings
from django.db import models

from apps.core.models import TimestampedModel
from apps.core.statuses import InquiryStatus

DEFAULT_SCHEMA = {
    "type": "object",
    "properties": {"continue": {"type": "boolean"}},
    "required": ["continue"],
}


class Inquiry(TimestampedModel):
    execution = models.OneToOneField("executions.Execution", on_delete=models.CASCADE, related_name="inquiry")
    prompt = models.TextField()
    schema = models.JSONField(default=dict)
    assignees = models.JSONField(default=list, blank=True, help_text="Usernames allowed to answer.")
    roles = models.JSONField(default=list, blank=True, help_text="Permission sets whose members may answer.")
    status = models.CharField(max_length=16, choices=InquiryStatus.choices, default=InquiryStatus.PENDING, db_index=True)
    response = models.JSONField(null=True, blank=True)
    responded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    responded_at = models.DateTimeField(null=True, blank=True)
    timeout_at = models.DateTimeField(null=True, blank=True, db_index=True)

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "inquiries"

    def __str__(self) -> str:
        return f"inquiry #{self.pk} ({self.status})"

    def pack_ref_for_permissions(self) -> str:
        return self.execution.pack_ref
