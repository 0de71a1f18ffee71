"""Packs (bundles of automation) and runtimes (how their processes start)."""
from __future__ import annotations

from django.db import models

from apps.core.models import Source, TimestampedModel
from apps.core.refs import validate_pack_ref


class Pack(TimestampedModel):
    ref = models.CharField(max_length=128, unique=True, validators=[validate_pack_ref])
    label = models.CharField(max_length=256, blank=True, default="")
    description = models.TextField(blank=True, default="")
    version = models.CharField(max_length=64, default="0.1.0")
    author = models.CharField(max_length=256, blank=True, default="")
    email = models.CharField(max_length=256, blank=True, default="")
    dependencies = models.JSONField(default=list, blank=True)
    config_schema = models.JSONField(default=dict, blank=True)
    config = models.JSONField(default=dict, blank=True, help_text="Values validated against config_schema.")
    path = models.CharField(max_length=1024, blank=True, default="", help_text="Directory it was registered from.")
    source = models.CharField(max_length=8, choices=Source.choices, default=Source.API)
    content_hash = models.CharField(max_length=64, blank=True, default="")
    registered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["ref"]

    def __str__(self) -> str:
        return self.ref

    def pack_ref_for_permissions(self) -> str:
        return self.ref


class RuntimeKind(models.TextChoices):
    SHELL = "shell"
    PYTHON = "python"
    NODE = "node"
    NOOP = "noop"
    HTTP = "http"
    INQUIRY = "inquiry"
    WORKFLOW = "workflow"


IN_PROCESS_KINDS = frozenset({RuntimeKind.NOOP, RuntimeKind.HTTP, RuntimeKind.INQUIRY, RuntimeKind.WORKFLOW})


class Runtime(TimestampedModel):
    """How an action or sensor process is started. ``name`` is what ``runner_type`` refers to."""

    name = models.CharField(max_length=64, unique=True, validators=[validate_pack_ref])
    kind = models.CharField(max_length=16, choices=RuntimeKind.choices)
    description = models.TextField(blank=True, default="")
    interpreter = models.CharField(
        max_length=512, blank=True, default="", help_text="Executable for process runtimes (e.g. /bin/sh)."
    )
    queue = models.CharField(max_length=64, blank=True, default="", help_text="Celery queue its executions use.")
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def in_process(self) -> bool:
        return self.kind in IN_PROCESS_KINDS
