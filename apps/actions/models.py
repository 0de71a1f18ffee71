"""Actions: a unit of work with a parameter schema and an entry point run by a runtime (SPEC §3)."""
from __future__ import annotations

from django.db import models

from apps.core.models import PackComponent


class ParameterFormat(models.TextChoices):
    JSON = "json"
    YAML = "yaml"
    DOTENV = "dotenv"


class OutputFormat(models.TextChoices):
    TEXT = "text"
    JSON = "json"
    YAML = "yaml"
    JSONL = "jsonl"


class Action(PackComponent):
    runner_type = models.ForeignKey(
        "packs.Runtime", to_field="name", db_column="runner_type", on_delete=models.PROTECT, related_name="actions"
    )
    entry_point = models.CharField(max_length=1024, blank=True, default="")
    timeout = models.PositiveIntegerField(default=600, help_text="Seconds before the process is killed.")
    parameter_format = models.CharField(max_length=8, choices=ParameterFormat.choices, default=ParameterFormat.JSON)
    output_format = models.CharField(max_length=8, choices=OutputFormat.choices, default=OutputFormat.TEXT)
    parameters = models.JSONField(default=dict, blank=True, help_text="name → JSON Schema (+ required/secret).")
    enabled = models.BooleanField(default=True, db_index=True)
    tags = models.JSONField(default=list, blank=True)

    class Meta(PackComponent.Meta):
        indexes = [models.Index(fields=["pack", "name"])]

    @property
    def secret_parameters(self) -> list[str]:
        return [name for name, spec in (self.parameters or {}).items() if isinstance(spec, dict) and spec.get("secret")]
