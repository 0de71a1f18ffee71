"""Admin for packs and runtimes."""
from __future__ import annotations

from django.contrib import admin
from django.utils.html import format_html_join

from apps.core.admin_utils import changelist_link

from .models import Pack, Runtime

# Component models ("app_label.Model", reverse accessor) shown as links on a pack's page. Strings only: the
# packs layer does not import the layers above it.
COMPONENTS = (
    ("actions.Action", "actions"),
    ("triggers.Trigger", "triggers"),
    ("triggers.Sensor", "sensors"),
    ("rules.Rule", "rules"),
    ("executions.Policy", "policies"),
)


@admin.register(Pack)
class PackAdmin(admin.ModelAdmin):
    list_display = ("ref", "label", "version", "author", "source", "registered_at", "updated")
    list_filter = ("source",)
    search_fields = ("ref", "label", "description", "author")
    readonly_fields = ("components", "path", "source", "content_hash", "registered_at", "created", "updated")
    fieldsets = (
        (None, {"fields": ("ref", "label", "description", "version", "author", "email", "components")}),
        ("Configuration", {"fields": ("config_schema", "config", "dependencies")}),
        ("Registration", {"fields": ("source", "path", "content_hash", "registered_at", "created", "updated")}),
    )

    def get_readonly_fields(self, request, obj=None):
        readonly = super().get_readonly_fields(request, obj)
        # Component refs (<pack>.<name>) are stored: renaming a pack would leave them stale.
        return ("ref", *readonly) if obj is not None else readonly

    @admin.display(description="components")
    def components(self, obj):
        if obj is None or obj.pk is None:
            return "-"
        rows = []
        for model, accessor in COMPONENTS:
            manager = getattr(obj, accessor, None)
            if manager is None:
                continue
            rows.append((changelist_link(model, f"{manager.count()} {accessor}", pack__id__exact=obj.pk),))
        return format_html_join(" · ", "{}", rows)


@admin.register(Runtime)
class RuntimeAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "in_process", "interpreter", "queue", "enabled")
    list_filter = ("kind", "enabled")
    search_fields = ("name", "description", "interpreter", "queue")
    readonly_fields = ("in_process", "created", "updated")
    fields = ("name", "kind", "description", "interpreter", "queue", "enabled", "in_process", "created", "updated")

    def get_readonly_fields(self, request, obj=None):
        readonly = super().get_readonly_fields(request, obj)
        # Actions and sensors reference a runtime by name (runner_type): renaming would orphan them.
        return ("name", *readonly) if obj is not None else readonly

    @admin.display(description="in process", boolean=True)
    def in_process(self, obj):
        return obj.in_process
