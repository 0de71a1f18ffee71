"""Admin for the durable notification log (append-only, view-only)."""
from __future__ import annotations

from django.contrib import admin

from apps.core.admin_utils import (
    EMPTY,
    IdSearchMixin,
    ReadOnlyAdminMixin,
    admin_link,
    json_block,
    short,
)

from .models import Notification

# Topics whose object_id names an execution / inquiry row, for a link.
OBJECT_MODELS = {"execution": "executions.Execution", "inquiry": "inquiries.Inquiry"}


@admin.register(Notification)
class NotificationAdmin(IdSearchMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("id", "type", "topic", "object_link", "pack_ref", "payload_short", "created")
    list_display_links = ("id", "type")
    list_filter = ("type",)
    search_fields = ("topic", "type", "pack_ref")
    search_id_fields = ("id", "object_id")
    date_hierarchy = "created"
    show_full_result_count = False
    list_per_page = 100
    fields = ("id", "type", "topic", "object_link", "pack_ref", "created", "payload_pretty")
    readonly_fields = fields

    @admin.display(description="object", ordering="object_id")
    def object_link(self, obj):
        if obj.object_id is None:
            return EMPTY
        model = OBJECT_MODELS.get(obj.type.split(".", 1)[0])
        if model is None:
            return obj.object_id
        return admin_link(model, obj.object_id)

    @admin.display(description="payload")
    def payload_short(self, obj):
        return short(obj.payload, 80)

    @admin.display(description="payload")
    def payload_pretty(self, obj):
        return json_block(obj.payload)
