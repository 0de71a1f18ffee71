"""Workflow definitions, workflow executions and task executions (SPEC §7).

The conductor keeps all state here: a workflow execution's variables, each task run, join arrivals and
with-items counters. Item results live in the child executions (one row each), never in one big context.
"""
from __future__ import annotations

from django.db import models

from apps.core.models import TimestampedModel
from apps.core.statuses import TaskStatus


class WorkflowDefinition(TimestampedModel):
    """The parsed body of a ``runner_type: workflow`` action."""

    action = models.OneToOneField("actions.Action", on_delete=models.CASCADE, related_name="workflow")
    source = models.TextField(blank=True, default="", help_text="YAML text as written.")
    definition = models.JSONField(default=dict, help_text="Parsed and normalised task graph.")
    checksum = models.CharField(max_length=64, blank=True, default="")
    valid = models.BooleanField(default=True)
    errors = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["action__ref"]

    def __str__(self) -> str:
        return f"workflow {self.action.ref}"

    def pack_ref_for_permissions(self) -> str:
        return self.action.pack.ref


class WorkflowExecution(TimestampedModel):
    execution = models.OneToOneField("executions.Execution", on_delete=models.CASCADE, related_name="workflow_state")
    definition = models.JSONField(help_text="Snapshot of the definition it started with.")
    vars = models.JSONField(default=dict, blank=True, help_text="Initial vars plus published values (redacted view).")
    output = models.JSONField(null=True, blank=True)
    errors = models.JSONField(default=list, blank=True)
    start_tasks = models.JSONField(null=True, blank=True, help_text="Re-run from these tasks instead of the entry tasks.")
    pause_requested = models.BooleanField(default=False)
    failing = models.BooleanField(default=False, help_text="An unhandled failure: start nothing new.")
    advance_count = models.PositiveIntegerField(default=0)
    last_advanced_at = models.DateTimeField(null=True, blank=True, db_index=True)

    def __str__(self) -> str:
        return f"workflow state of execution {self.execution_id}"

    def pack_ref_for_permissions(self) -> str:
        return self.execution.pack_ref


class TaskExecution(TimestampedModel):
    """One run of one task. A task reached twice (a loop, or no join) gets one row per arrival."""

    workflow_execution = models.ForeignKey(WorkflowExecution, on_delete=models.CASCADE, related_name="tasks")
    task_name = models.CharField(max_length=128)
    status = models.CharField(max_length=16, choices=TaskStatus.choices, default=TaskStatus.READY, db_index=True)
    attempt = models.PositiveIntegerField(default=1)
    input = models.JSONField(null=True, blank=True)
    result = models.JSONField(null=True, blank=True)
    published = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True, default="")
    items = models.JSONField(null=True, blank=True, help_text="with_items: the rendered items (or batches), once.")
    concurrency = models.PositiveIntegerField(null=True, blank=True)
    execution = models.ForeignKey(
        "executions.Execution", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="The child execution (single-action tasks).",
    )
    # join: arrivals counted in the database so they survive restarts and days-long inquiries.
    join_required = models.PositiveIntegerField(null=True, blank=True)
    join_arrivals = models.PositiveIntegerField(default=0)
    # with_items counters, incremented with UPDATE ... SET n = n + 1.
    items_total = models.PositiveIntegerField(null=True, blank=True)
    items_started = models.PositiveIntegerField(default=0)
    items_done = models.PositiveIntegerField(default=0)
    items_failed = models.PositiveIntegerField(default=0)
    run_after = models.DateTimeField(null=True, blank=True, db_index=True, help_text="Retry back-off.")
    timeout_at = models.DateTimeField(null=True, blank=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["workflow_execution", "id"]
        indexes = [
            models.Index(fields=["workflow_execution", "task_name"]),
            models.Index(fields=["workflow_execution", "status"]),
            models.Index(fields=["status", "run_after"]),
        ]

    def __str__(self) -> str:
        return f"{self.task_name} ({self.status})"


class WorkflowVariable(models.Model):
    """One workflow variable (initial ``vars`` and published values): a publish writes only what it changes,
    and a template reads only the names it uses, so a step's cost does not grow with the context."""

    workflow_execution = models.ForeignKey(WorkflowExecution, on_delete=models.CASCADE, related_name="variables")
    name = models.CharField(max_length=255)
    value = models.JSONField(null=True)
    secret = models.BooleanField(default=False, help_text="Derived from a secret: shown redacted.")
    task_execution = models.ForeignKey(TaskExecution, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["workflow_execution", "name"]
        constraints = [models.UniqueConstraint(fields=["workflow_execution", "name"], name="uniq_workflow_variable")]

    def __str__(self) -> str:
        return self.name
