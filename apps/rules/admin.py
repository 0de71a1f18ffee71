"""Admin for rules and enforcements (enforcements are append-only and view-only)."""
from __future__ import annotations

from django.contrib import admin
from django.utils.html import format_html_join

from apps.core.admin_utils import (
    EMPTY,
    FieldsetsReadOnlyMixin,
    IdSearchMixin,
    PackComponentAdmin,
    ReadOnlyAdminMixin,
    admin_link,
    changelist_link,
    json_block,
    status_html,
)

from .models import Enforcement, Rule


@admin.register(Rule)
class RuleAdmin(PackComponentAdmin):
    list_display = (
        "ref", "pack_link", "trigger_link", "action_link", "enabled", "owner_name", "next_fire_at", "last_fired_at",
        "source", "updated",
    )
    list_filter = ("enabled", "pack", "source")
    list_select_related = ("pack", "trigger", "action", "owner")
    search_fields = ("ref", "name", "description", "trigger__ref", "action__ref")
    autocomplete_fields = ("pack", "trigger", "action", "owner")
    readonly_fields = (*PackComponentAdmin.readonly_fields, "next_fire_at", "last_fired_at", "related")
    fieldsets = (
        (None, {"fields": ("ref", "pack", "name", "description", "enabled", "owner", "related")}),
        ("When", {"fields": ("trigger", "trigger_params", "criteria", "condition")}),
        ("Then", {"fields": ("action", "action_params")}),
        ("Timer", {"fields": ("next_fire_at", "last_fired_at")}),
        ("Origin", {"fields": ("source", "file_path", "created", "updated")}),
    )

    @admin.display(description="trigger", ordering="trigger__ref")
    def trigger_link(self, obj):
        return admin_link("triggers.Trigger", obj.trigger_id, obj.trigger.ref)

    @admin.display(description="action", ordering="action__ref")
    def action_link(self, obj):
        return admin_link("actions.Action", obj.action_id, obj.action.ref)

    @admin.display(description="owner", ordering="owner__username")
    def owner_name(self, obj):
        return admin_link("accounts.User", obj.owner_id, obj.owner.username if obj.owner_id else None)

    @admin.display(description="related")
    def related(self, obj):
        if obj is None or obj.pk is None:
            return EMPTY
        rows = [
            (changelist_link(Enforcement, "enforcements", rule__id__exact=obj.pk),),
            (changelist_link("executions.Execution", "executions", rule__id__exact=obj.pk),),
        ]
        return format_html_join(" · ", "{}", rows)


@admin.register(Enforcement)
class EnforcementAdmin(FieldsetsReadOnlyMixin, IdSearchMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("id", "rule_link", "event_link", "status_display", "execution_link", "failure_short", "created")
    list_display_links = ("id",)
    list_filter = ("status",)
    search_fields = ("rule_ref",)
    search_id_fields = ("id", "event_id", "execution_id")
    date_hierarchy = "created"
    show_full_result_count = False
    list_per_page = 50
    fieldsets = (
        (None, {"fields": ("id", "rule", "rule_ref", "event", "status_display", "condition", "execution",
                           "failure_reason", "created")}),
        ("Details", {"fields": ("criteria_pretty", "parameters_pretty")}),
    )

    @admin.display(description="rule", ordering="rule_ref")
    def rule_link(self, obj):
        if obj.rule_id is None:
            return obj.rule_ref or EMPTY
        return admin_link(Rule, obj.rule_id, obj.rule_ref)

    @admin.display(description="event", ordering="event_id")
    def event_link(self, obj):
        return admin_link("triggers.Event", obj.event_id)

    @admin.display(description="status", ordering="status")
    def status_display(self, obj):
        return status_html(obj.status)

    @admin.display(description="execution", ordering="execution_id")
    def execution_link(self, obj):
        return admin_link("executions.Execution", obj.execution_id)

    @admin.display(description="failure reason")
    def failure_short(self, obj):
        return (obj.failure_reason or "")[:80] or EMPTY

    @admin.display(description="criteria")
    def criteria_pretty(self, obj):
        return json_block(obj.criteria)

    @admin.display(description="parameters")
    def parameters_pretty(self, obj):
        return json_block(obj.parameters)
