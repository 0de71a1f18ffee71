"""Admin for executions, their output and artifacts, policies and workers.

Executions are written by the services (every status change is a conditional transition), so they are
view-only here. Links to enforcements, rules, events, workflows and inquiries are built from strings: the
executions layer never imports the layers above it.
"""
from __future__ import annotations

from django.contrib import admin
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from apps.core.admin_utils import (
    EMPTY,
    FieldsetsReadOnlyMixin,
    IdSearchMixin,
    PackComponentAdmin,
    ReadOnlyAdminMixin,
    ReadOnlyTabularInline,
    admin_link,
    changelist_link,
    format_duration_ms,
    json_block,
    links_list,
    pack_ref_filter,
    runner_type_filter,
    short,
    status_html,
    text_block,
)
from apps.core.statuses import ACTIVE

from .models import Artifact, Execution, OutputChunk, Policy, Worker

CHILDREN_SHOWN = 50
OUTPUT_TAIL_CHARS = 32 * 1024


class TopLevelFilter(admin.SimpleListFilter):
    title = "level"
    parameter_name = "level"

    def lookups(self, request, model_admin):
        return (("top", "top-level only"), ("child", "children only"))

    def queryset(self, request, queryset):
        if self.value() == "top":
            return queryset.filter(parent__isnull=True)
        if self.value() == "child":
            return queryset.filter(parent__isnull=False)
        return queryset


class ActiveFilter(admin.SimpleListFilter):
    title = "activity"
    parameter_name = "activity"

    def lookups(self, request, model_admin):
        return (("active", "active (not finished)"), ("terminal", "finished"))

    def queryset(self, request, queryset):
        if self.value() == "active":
            return queryset.filter(status__in=ACTIVE)
        if self.value() == "terminal":
            return queryset.exclude(status__in=ACTIVE)
        return queryset


class ArtifactInline(ReadOnlyTabularInline):
    model = Artifact
    fields = ("name", "content_type", "size", "path", "created")
    readonly_fields = fields


@admin.register(Execution)
class ExecutionAdmin(FieldsetsReadOnlyMixin, IdSearchMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "id", "action_link", "status_display", "pack_ref", "runner_type", "parent_link", "rule_link",
        "enforcement_link", "event_link", "started_by_name", "worker_link", "created", "started_at", "duration",
    )
    list_display_links = ("id",)
    list_filter = ("status", ActiveFilter, TopLevelFilter, pack_ref_filter(), runner_type_filter(), "cancel_requested")
    list_select_related = ("rule", "worker", "started_by")
    search_fields = ("action_ref", "task_name")
    date_hierarchy = "created"
    show_full_result_count = False
    list_per_page = 50
    inlines = (ArtifactInline,)
    fieldsets = (
        (None, {"fields": ("id", "action", "action_ref", "pack_ref", "runner_type", "status_display",
                           "waiting_reason", "cancel_requested")}),
        ("Timings", {"fields": ("created", "scheduled_at", "started_at", "finished_at", "duration")}),
        ("Input and result", {"fields": ("parameters_pretty", "result_pretty")}),
        (
            "Lineage",
            {"fields": ("parent", "children_links", "original", "reruns_links", "enforcement", "rule",
                        "trigger_event", "started_by", "workflow_links", "inquiry_link")},
        ),
        (
            "Scheduling",
            {"fields": ("worker", "queue", "run_after", "queued_at", "policy", "attempt", "retry_count", "timeout",
                        "pid")},
        ),
        ("Output", {"fields": ("stdout_size", "stderr_size", "stdout_tail", "stderr_tail", "output_chunks_link")}),
    )

    # -- changelist columns ---------------------------------------------------------------------------

    @admin.display(description="action", ordering="action_ref")
    def action_link(self, obj):
        if obj.action_id is None:
            return obj.action_ref or EMPTY
        return admin_link("actions.Action", obj.action_id, obj.action_ref)

    @admin.display(description="status", ordering="status")
    def status_display(self, obj):
        return status_html(obj.status)

    @admin.display(description="parent", ordering="parent_id")
    def parent_link(self, obj):
        return admin_link(Execution, obj.parent_id)

    @admin.display(description="rule", ordering="rule__ref")
    def rule_link(self, obj):
        return admin_link("rules.Rule", obj.rule_id, obj.rule.ref if obj.rule_id else None)

    @admin.display(description="enforcement", ordering="enforcement_id")
    def enforcement_link(self, obj):
        return admin_link("rules.Enforcement", obj.enforcement_id)

    @admin.display(description="trigger event", ordering="trigger_event_id")
    def event_link(self, obj):
        return admin_link("triggers.Event", obj.trigger_event_id)

    @admin.display(description="started by", ordering="started_by__username")
    def started_by_name(self, obj):
        return admin_link("accounts.User", obj.started_by_id, obj.started_by.username if obj.started_by_id else None)

    @admin.display(description="worker", ordering="worker__name")
    def worker_link(self, obj):
        return admin_link(Worker, obj.worker_id, obj.worker.name if obj.worker_id else None)

    @admin.display(description="duration")
    def duration(self, obj):
        return format_duration_ms(obj.duration_ms)

    # -- detail fields --------------------------------------------------------------------------------

    @admin.display(description="parameters")
    def parameters_pretty(self, obj):
        return json_block(obj.parameters)

    @admin.display(description="result")
    def result_pretty(self, obj):
        return json_block(obj.result)

    @admin.display(description="children")
    def children_links(self, obj):
        total = obj.children.count()
        if not total:
            return EMPTY
        rows = obj.children.order_by("id").values_list("id", "action_ref", "status")[:CHILDREN_SHOWN]
        links = links_list(Execution, [(pk, f"#{pk} {ref} ({status})") for pk, ref, status in rows])
        more = changelist_link(Execution, f"all {total} children", parent__id__exact=obj.pk)
        return format_html("{}<br>{}", links, more)

    @admin.display(description="re-runs")
    def reruns_links(self, obj):
        rows = obj.reruns.order_by("id").values_list("id", "status")[:CHILDREN_SHOWN]
        return links_list(Execution, [(pk, f"#{pk} ({status})") for pk, status in rows])

    @admin.display(description="workflow")
    def workflow_links(self, obj):
        parts = []
        state = getattr(obj, "workflow_state", None)
        if state is not None:
            parts.append((admin_link("workflows.WorkflowExecution", state.pk, "workflow state"),))
        if obj.task_execution_id is not None:
            label = f"task {obj.task_name}" + (f" [item {obj.item_index}]" if obj.item_index is not None else "")
            parts.append((admin_link("workflows.TaskExecution", obj.task_execution_id, label),))
        return format_html_join(" · ", "{}", parts) if parts else EMPTY

    @admin.display(description="inquiry")
    def inquiry_link(self, obj):
        inquiry = getattr(obj, "inquiry", None)
        if inquiry is None:
            return EMPTY
        return admin_link("inquiries.Inquiry", inquiry.pk, f"inquiry #{inquiry.pk} ({inquiry.status})")

    def _tail(self, obj, stream: str, size: int) -> str:
        chunks, total = [], 0
        for data in obj.output_chunks.filter(stream=stream).order_by("-offset").values_list("data", flat=True)[:500]:
            chunks.append(data)
            total += len(data)
            if total >= OUTPUT_TAIL_CHARS:
                break
        text = "".join(reversed(chunks))[-OUTPUT_TAIL_CHARS:]
        if not text:
            return EMPTY
        if size > len(text):
            return format_html("<em>… last {} characters</em>{}", len(text), text_block(text))
        return text_block(text)

    @admin.display(description="stdout")
    def stdout_tail(self, obj):
        return self._tail(obj, "stdout", obj.stdout_size)

    @admin.display(description="stderr")
    def stderr_tail(self, obj):
        return self._tail(obj, "stderr", obj.stderr_size)

    @admin.display(description="output chunks")
    def output_chunks_link(self, obj):
        return changelist_link(OutputChunk, "all output chunks", execution__id__exact=obj.pk)


@admin.register(OutputChunk)
class OutputChunkAdmin(IdSearchMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("id", "execution_link", "stream", "offset", "size", "preview", "created")
    list_filter = ("stream",)
    search_fields = ("execution__action_ref",)
    search_id_fields = ("id", "execution_id")
    show_full_result_count = False
    fields = ("id", "execution", "stream", "offset", "size", "created", "data_block")
    readonly_fields = fields

    @admin.display(description="execution", ordering="execution_id")
    def execution_link(self, obj):
        return admin_link(Execution, obj.execution_id)

    @admin.display(description="bytes")
    def size(self, obj):
        return len(obj.data.encode())

    @admin.display(description="data")
    def preview(self, obj):
        return short(obj.data, 60)

    @admin.display(description="data")
    def data_block(self, obj):
        return text_block(obj.data)


@admin.register(Artifact)
class ArtifactAdmin(IdSearchMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("id", "name", "execution_link", "content_type", "size", "created")
    list_filter = ("content_type",)
    list_select_related = ("execution",)
    search_fields = ("name", "execution__action_ref")
    search_id_fields = ("id", "execution_id")
    date_hierarchy = "created"
    fields = ("id", "execution", "name", "content_type", "size", "path", "created", "updated", "data_block")
    readonly_fields = fields

    @admin.display(description="execution", ordering="execution_id")
    def execution_link(self, obj):
        return admin_link(Execution, obj.execution_id, f"#{obj.execution_id} {obj.execution.action_ref}")

    @admin.display(description="data")
    def data_block(self, obj):
        return text_block(obj.data)


@admin.register(Policy)
class PolicyAdmin(PackComponentAdmin):
    list_display = ("ref", "pack_link", "action_link", "type", "summary", "enabled", "source", "updated")
    list_filter = ("type", "enabled", "on_limit", "pack", "source")
    list_select_related = ("pack", "action")
    search_fields = ("ref", "name", "description", "action__ref")
    autocomplete_fields = ("pack", "action")
    fieldsets = (
        (None, {"fields": ("ref", "pack", "name", "description", "action", "type", "enabled")}),
        ("Concurrency", {"fields": ("threshold", "attributes", "on_limit")}),
        ("Rate limit", {"fields": ("limit", "window_seconds")}),
        ("Retry", {"fields": ("on", "max_retries", "delay_seconds", "backoff")}),
        ("Origin", {"fields": ("source", "file_path", "created", "updated")}),
    )

    @admin.display(description="action", ordering="action__ref")
    def action_link(self, obj):
        return admin_link("actions.Action", obj.action_id, obj.action.ref)

    @admin.display(description="settings")
    def summary(self, obj):
        if obj.type == "concurrency":
            attrs = f" per {', '.join(obj.attributes)}" if obj.attributes else ""
            return f"max {obj.threshold} running{attrs}, then {obj.on_limit}"
        if obj.type == "rate_limit":
            return f"{obj.limit} per {obj.window_seconds} s"
        if obj.type == "retry":
            return f"{obj.max_retries}× on {', '.join(obj.on or [])}, {obj.delay_seconds} s {obj.backoff}"
        return EMPTY


@admin.register(Worker)
class WorkerAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "name", "hostname", "pid", "state_display", "mode", "load", "queues", "runtimes", "started_at",
        "last_heartbeat", "heartbeat_age",
    )
    list_filter = ("state", "mode")
    search_fields = ("name", "hostname")
    fields = (
        "name", "hostname", "pid", "state", "mode", "queues", "runtimes", "concurrency", "running", "started_at",
        "last_heartbeat", "heartbeat_age", "executions_links", "created", "updated",
    )
    readonly_fields = fields

    @admin.display(description="state", ordering="state")
    def state_display(self, obj):
        return status_html(obj.state)

    @admin.display(description="running / slots")
    def load(self, obj):
        return f"{obj.running} / {obj.concurrency}"

    @admin.display(description="heartbeat age", ordering="-last_heartbeat")
    def heartbeat_age(self, obj):
        if obj.last_heartbeat is None:
            return EMPTY
        return format_duration_ms(int((timezone.now() - obj.last_heartbeat).total_seconds() * 1000))

    @admin.display(description="executions")
    def executions_links(self, obj):
        active = obj.executions.filter(status__in=ACTIVE).count()
        return format_html(
            "{} · {}",
            changelist_link(Execution, f"{active} active", worker__id__exact=obj.pk, activity="active"),
            changelist_link(Execution, "all", worker__id__exact=obj.pk),
        )
