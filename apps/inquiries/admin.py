"""Admin for inquiries.

Responding resumes the paused execution, so it goes through the API/CLI (which validate the answer against
the schema and check who may answer); inquiries are view-only here.
"""
from __future__ import annotations

from django.contrib import admin

from apps.core.admin_utils import (
    EMPTY,
    FieldsetsReadOnlyMixin,
    IdSearchMixin,
    ReadOnlyAdminMixin,
    admin_link,
    json_block,
    short,
    status_html,
)

from .models import Inquiry


@admin.register(Inquiry)
class InquiryAdmin(FieldsetsReadOnlyMixin, IdSearchMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "id", "prompt_short", "status_display", "execution_link", "assignees", "roles", "responded_by_name",
        "created", "timeout_at", "responded_at",
    )
    list_display_links = ("id", "prompt_short")
    list_filter = ("status",)
    list_select_related = ("execution", "responded_by")
    search_fields = ("prompt", "execution__action_ref")
    search_id_fields = ("id", "execution_id")
    date_hierarchy = "created"
    fieldsets = (
        (None, {"fields": ("id", "execution", "execution_status", "prompt", "status_display", "created",
                           "timeout_at")}),
        ("Who may answer", {"fields": ("assignees", "roles")}),
        ("Answer", {"fields": ("schema_pretty", "response_pretty", "responded_by", "responded_at")}),
    )

    @admin.display(description="prompt", ordering="prompt")
    def prompt_short(self, obj):
        return short(obj.prompt, 60)

    @admin.display(description="status", ordering="status")
    def status_display(self, obj):
        return status_html(obj.status)

    @admin.display(description="execution", ordering="execution_id")
    def execution_link(self, obj):
        return admin_link("executions.Execution", obj.execution_id, f"#{obj.execution_id} {obj.execution.action_ref}")

    @admin.display(description="execution status")
    def execution_status(self, obj):
        return status_html(obj.execution.status)

    @admin.display(description="responded by", ordering="responded_by__username")
    def responded_by_name(self, obj):
        if obj.responded_by_id is None:
            return EMPTY
        return admin_link("accounts.User", obj.responded_by_id, obj.responded_by.username)

    @admin.display(description="schema")
    def schema_pretty(self, obj):
        return json_block(obj.schema)

    @admin.display(description="response")
    def response_pretty(self, obj):
        return json_block(obj.response)
