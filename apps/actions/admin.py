"""Admin for actions."""
from __future__ import annotations

from django.contrib import admin
from django.utils.html import format_html_join

from apps.core.admin_utils import PackComponentAdmin, admin_link, changelist_link

from .models import Action


@admin.register(Action)
class ActionAdmin(PackComponentAdmin):
    list_display = ("ref", "pack_link", "runner", "enabled", "timeout", "source", "updated")
    list_filter = ("enabled", "runner_type", "pack", "source")
    readonly_fields = (*PackComponentAdmin.readonly_fields, "related")
    fieldsets = (
        (None, {"fields": ("ref", "pack", "name", "description", "enabled", "tags", "related")}),
        (
            "Running",
            {"fields": ("runner_type", "entry_point", "timeout", "parameter_format", "output_format", "parameters")},
        ),
        ("Origin", {"fields": ("source", "file_path", "created", "updated")}),
    )

    @admin.display(description="runner type", ordering="runner_type")
    def runner(self, obj):
        # runner_type_id *is* the runtime name: no query per row.
        return obj.runner_type_id or "-"

    @admin.display(description="related")
    def related(self, obj):
        if obj is None or obj.pk is None:
            return "-"
        rows = [
            (changelist_link("executions.Execution", "executions", action__id__exact=obj.pk),),
            (changelist_link("rules.Rule", "rules", action__id__exact=obj.pk),),
            (changelist_link("executions.Policy", "policies", action__id__exact=obj.pk),),
        ]
        workflow = getattr(obj, "workflow", None)
        if workflow is not None:
            rows.append((admin_link("workflows.WorkflowDefinition", workflow.pk, "workflow definition"),))
        return format_html_join(" · ", "{}", rows)
