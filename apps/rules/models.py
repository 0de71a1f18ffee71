"""Rules and enforcements (SPEC §5)."""
from __future__ import annotations

from django.conf import settings
from django.db import models

from apps.core.models import PackComponent
from apps.core.statuses import EnforcementStatus


class Rule(PackComponent):
    trigger = models.ForeignKey("triggers.Trigger", on_delete=models.RESTRICT, related_name="rules")
    trigger_params = models.JSONField(default=dict, blank=True)
    criteria = models.JSONField(default=dict, blank=True)
    condition = models.TextField(blank=True, default="", help_text="Optional boolean Jinja expression.")
    action = models.ForeignKey("actions.Action", on_delete=models.RESTRICT, related_name="rules")
    action_params = models.JSONField(default=dict, blank=True)
    enabled = models.BooleanField(default=True, db_index=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="rules",
        help_text="Executions the rule starts run as this identity.",
    )
    # Timer state (rules on core.*timer triggers): claimed by the scheduler tick with a conditional update.
    next_fire_at = models.DateTimeField(null=True, blank=True, db_index=True)
    last_fired_at = models.DateTimeField(null=True, blank=True)

    class Meta(PackComponent.Meta):
        indexes = [models.Index(fields=["trigger", "enabled"])]


class Enforcement(models.Model):
    """That a rule was evaluated against an event, and what came of it. At most one per (rule, event)."""

    rule = models.ForeignKey(Rule, null=True, on_delete=models.SET_NULL, related_name="enforcements",
                             db_index=False)  # the (rule, event) unique index leads with it
    rule_ref = models.CharField(max_length=256)
    event = models.ForeignKey("triggers.Event", on_delete=models.CASCADE, related_name="enforcements")
    status = models.CharField(max_length=16, choices=EnforcementStatus.choices)
    criteria = models.JSONField(default=list, blank=True, help_text="Each criterion's outcome.")
    condition = models.BooleanField(null=True, blank=True)
    parameters = models.JSONField(null=True, blank=True, help_text="Rendered action parameters (secrets redacted).")
    execution = models.OneToOneField(
        "executions.Execution", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    failure_reason = models.TextField(blank=True, default="")
    created = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-id"]
        constraints = [models.UniqueConstraint(fields=["rule", "event"], name="uniq_enforcement_rule_event")]
        # Plain indexes (no LIKE pattern-ops ones: nothing filters these by prefix).
        indexes = [models.Index(fields=["rule_ref"], name="enforcement_rule_ref"),
                   models.Index(fields=["status"], name="enforcement_status")]

    def __str__(self) -> str:
        return f"enforcement #{self.pk} {self.rule_ref} on event {self.event_id}"

    def pack_ref_for_permissions(self) -> str:
        return self.rule_ref.split(".", 1)[0]
