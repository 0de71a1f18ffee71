"""Admin for workflow definitions, workflow executions and task executions.

All three are written by the pack loader and the conductor: view-only here. A definition's ``source`` edited
in place would not be re-parsed into ``definition``, so workflows are changed through their pack or the API.
"""
from __future__ import annotations

from django.contrib import admin

from apps.core.admin_utils import (
    EMPTY,
    FieldsetsReadOnlyMixin,
    IdSearchMixin,
    ReadOnlyAdminMixin,
    ReadOnlyTabularInline,
    admin_link,
    changelist_link,
    format_duration_ms,
    json_block,
    status_html,
    text_block,
)

from .models import TaskExecution, WorkflowDefinition, WorkflowExecution


@admin.register(WorkflowDefinition)
class WorkflowDefinitionAdmin(IdSearchMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("id", "action_link", "pack", "valid", "task_count", "checksum_short", "updated")
    list_filter = ("valid", "action__pack")
    list_select_related = ("action", "action__pack")
    search_fields = ("action__ref",)
    fields = ("action", "valid", "errors_pretty", "checksum", "source_block", "definition_pretty", "created",
              "updated")
    readonly_fields = fields

    @admin.display(description="action", ordering="action__ref")
    def action_link(self, obj):
        return admin_link("actions.Action", obj.action_id, obj.action.ref)

    @admin.display(description="pack", ordering="action__pack__ref")
    def pack(self, obj):
        return admin_link("packs.Pack", obj.action.pack_id, obj.action.pack.ref)

    @admin.display(description="tasks")
    def task_count(self, obj):
        tasks = (obj.definition or {}).get("tasks") if isinstance(obj.definition, dict) else None
        return len(tasks) if isinstance(tasks, (list, dict)) else EMPTY

    @admin.display(description="checksum")
    def checksum_short(self, obj):
        return obj.checksum[:12] or EMPTY

    @admin.display(description="errors")
    def errors_pretty(self, obj):
        return json_block(obj.errors) if obj.errors else EMPTY

    @admin.display(description="source (YAML)")
    def source_block(self, obj):
        return text_block(obj.source)

    @admin.display(description="parsed definition")
    def definition_pretty(self, obj):
        return json_block(obj.definition)


class TaskExecutionInline(ReadOnlyTabularInline):
    model = TaskExecution
    fields = ("task_name", "status", "attempt", "child_execution", "items", "started_at", "finished_at")
    readonly_fields = fields
    ordering = ("id",)

    @admin.display(description="child execution")
    def child_execution(self, obj):
        return admin_link("executions.Execution", obj.execution_id)

    @admin.display(description="items done / total")
    def items(self, obj):
        return EMPTY if obj.items_total is None else f"{obj.items_done} / {obj.items_total}"


@admin.register(WorkflowExecution)
class WorkflowExecutionAdmin(FieldsetsReadOnlyMixin, IdSearchMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "id", "execution_link", "execution_status", "failing", "pause_requested", "advance_count", "created",
        "last_advanced_at",
    )
    list_display_links = ("id",)
    list_filter = ("execution__status", "failing", "pause_requested")
    list_select_related = ("execution",)
    search_fields = ("execution__action_ref",)
    search_id_fields = ("id", "execution_id")
    date_hierarchy = "created"
    show_full_result_count = False
    inlines = (TaskExecutionInline,)
    fieldsets = (
        (None, {"fields": ("id", "execution", "execution_status", "failing", "pause_requested", "advance_count",
                           "last_advanced_at", "created", "updated")}),
        ("State", {"fields": ("vars_pretty", "output_pretty", "errors_pretty")}),
        ("Definition snapshot", {"fields": ("definition_pretty",), "classes": ("collapse",)}),
    )

    @admin.display(description="execution", ordering="execution_id")
    def execution_link(self, obj):
        return admin_link("executions.Execution", obj.execution_id,
                          f"#{obj.execution_id} {obj.execution.action_ref}")

    @admin.display(description="status", ordering="execution__status")
    def execution_status(self, obj):
        return status_html(obj.execution.status)

    @admin.display(description="vars")
    def vars_pretty(self, obj):
        return json_block(obj.vars)

    @admin.display(description="output")
    def output_pretty(self, obj):
        return json_block(obj.output)

    @admin.display(description="errors")
    def errors_pretty(self, obj):
        return json_block(obj.errors) if obj.errors else EMPTY

    @admin.display(description="definition")
    def definition_pretty(self, obj):
        return json_block(obj.definition)


@admin.register(TaskExecution)
class TaskExecutionAdmin(FieldsetsReadOnlyMixin, IdSearchMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "id", "task_name", "workflow_link", "status_display", "attempt", "child_execution_link", "items",
        "started_at", "finished_at", "duration",
    )
    list_display_links = ("id", "task_name")
    list_filter = ("status",)
    list_select_related = ("workflow_execution__execution",)
    search_fields = ("task_name", "workflow_execution__execution__action_ref")
    search_id_fields = ("id", "workflow_execution_id", "workflow_execution__execution_id", "execution_id")
    date_hierarchy = "created"
    show_full_result_count = False
    fieldsets = (
        (None, {"fields": ("id", "task_name", "workflow_execution", "status_display", "attempt", "execution",
                           "created", "started_at", "finished_at", "duration", "run_after", "timeout_at")}),
        ("Data", {"fields": ("input_pretty", "result_pretty", "published_pretty")}),
        ("Joins and items", {"fields": ("join_required", "join_arrivals", "items_total", "items_started",
                                        "items_done", "items_failed", "item_children_link")}),
    )

    @admin.display(description="workflow", ordering="workflow_execution_id")
    def workflow_link(self, obj):
        execution = obj.workflow_execution.execution
        return admin_link(WorkflowExecution, obj.workflow_execution_id,
                          f"#{obj.workflow_execution_id} {execution.action_ref} (execution #{execution.pk})")

    @admin.display(description="status", ordering="status")
    def status_display(self, obj):
        return status_html(obj.status)

    @admin.display(description="child execution", ordering="execution_id")
    def child_execution_link(self, obj):
        return admin_link("executions.Execution", obj.execution_id)

    @admin.display(description="items done / total")
    def items(self, obj):
        if obj.items_total is None:
            return EMPTY
        failed = f", {obj.items_failed} failed" if obj.items_failed else ""
        return f"{obj.items_done} / {obj.items_total}{failed}"

    @admin.display(description="duration")
    def duration(self, obj):
        if obj.started_at is None or obj.finished_at is None:
            return EMPTY
        return format_duration_ms(int((obj.finished_at - obj.started_at).total_seconds() * 1000))

    @admin.display(description="input")
    def input_pretty(self, obj):
        return json_block(obj.input)

    @admin.display(description="result")
    def result_pretty(self, obj):
        return json_block(obj.result)

    @admin.display(description="published")
    def published_pretty(self, obj):
        return json_block(obj.published)

    @admin.display(description="executions")
    def item_children_link(self, obj):
        # Every execution this task run started (one per item for with_items, one per retry attempt).
        return changelist_link("executions.Execution", "executions of this task run", task_execution_id=obj.pk)
