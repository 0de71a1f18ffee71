"""Admin for triggers, webhooks, sensors and events.

Events are append-only and view-only here. Webhook keys and HMAC secrets are never shown: keys are issued
(and rotated) through the API, which shows them once.
"""
from __future__ import annotations

from django.contrib import admin
from django.utils.html import format_html, format_html_join

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
    text_block,
)

from .models import Event, Sensor, Trigger, Webhook

ENFORCEMENTS_SHOWN = 50


@admin.register(Trigger)
class TriggerAdmin(PackComponentAdmin):
    list_display = ("ref", "pack_link", "enabled", "system", "has_webhook", "source", "updated")
    list_filter = ("enabled", "system", "pack", "source")
    readonly_fields = (*PackComponentAdmin.readonly_fields, "related")
    fieldsets = (
        (None, {"fields": ("ref", "pack", "name", "description", "enabled", "system", "related")}),
        ("Schemas", {"fields": ("payload_schema", "parameters_schema")}),
        ("Origin", {"fields": ("source", "file_path", "created", "updated")}),
    )

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("webhook")

    @admin.display(description="webhook", boolean=True)
    def has_webhook(self, obj):
        return getattr(obj, "webhook", None) is not None

    @admin.display(description="related")
    def related(self, obj):
        if obj is None or obj.pk is None:
            return EMPTY
        rows = [
            (changelist_link(Event, "events", trigger__id__exact=obj.pk),),
            (changelist_link("rules.Rule", "rules", trigger__id__exact=obj.pk),),
            (changelist_link(Sensor, "sensors", trigger_types__id__exact=obj.pk),),
        ]
        webhook = getattr(obj, "webhook", None)
        if webhook is not None:
            rows.append((admin_link(Webhook, webhook.pk, "webhook"),))
        return format_html_join(" · ", "{}", rows)


@admin.register(Webhook)
class WebhookAdmin(IdSearchMixin, admin.ModelAdmin):
    """Options are editable; the key (only its hash is stored) and the HMAC secret are not shown."""

    list_display = (
        "id", "trigger_link", "key_prefix", "enabled", "has_hmac_secret", "allowed_cidrs", "max_payload_bytes",
        "rate_limit_per_minute", "last_received_at",
    )
    list_filter = ("enabled",)
    list_select_related = ("trigger",)
    search_fields = ("trigger__ref", "key_prefix")
    fields = (
        "trigger", "key_prefix", "has_hmac_secret", "enabled", "allowed_cidrs", "max_payload_bytes",
        "rate_limit_per_minute", "last_received_at", "created", "updated",
    )
    readonly_fields = ("trigger", "key_prefix", "has_hmac_secret", "last_received_at", "created", "updated")

    def has_add_permission(self, request):
        return False

    @admin.display(description="trigger", ordering="trigger__ref")
    def trigger_link(self, obj):
        return admin_link(Trigger, obj.trigger_id, obj.trigger.ref)

    @admin.display(description="HMAC secret", boolean=True)
    def has_hmac_secret(self, obj):
        return bool(obj.hmac_secret_encrypted)


@admin.register(Sensor)
class SensorAdmin(PackComponentAdmin):
    list_display = (
        "ref", "pack_link", "runner", "mode", "enabled", "state_display", "restarts", "host", "pid",
        "last_started_at", "last_exit_code",
    )
    list_filter = ("enabled", "state", "mode", "runner_type", "pack", "source")
    autocomplete_fields = ("pack", "trigger_types")
    readonly_fields = (
        *PackComponentAdmin.readonly_fields, "state", "pid", "host", "restarts", "last_started_at", "last_exit_code",
        "last_stderr_block", "next_start_at",
    )
    fieldsets = (
        (None, {"fields": ("ref", "pack", "name", "description", "enabled", "trigger_types")}),
        ("Running", {"fields": ("runner_type", "entry_point", "mode", "poll_interval")}),
        (
            "Supervisor status",
            {"fields": ("state", "host", "pid", "restarts", "last_started_at", "last_exit_code", "next_start_at",
                        "last_stderr_block")},
        ),
        ("Origin", {"fields": ("source", "file_path", "created", "updated")}),
    )

    @admin.display(description="runner type", ordering="runner_type")
    def runner(self, obj):
        return obj.runner_type_id or EMPTY

    @admin.display(description="state", ordering="state")
    def state_display(self, obj):
        return status_html(obj.state)

    @admin.display(description="last stderr lines")
    def last_stderr_block(self, obj):
        return text_block(obj.last_stderr)


@admin.register(Event)
class EventAdmin(FieldsetsReadOnlyMixin, IdSearchMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("id", "trigger_link", "status_display", "emitted_by_name", "source_event_link", "created",
                    "processed_at")
    list_display_links = ("id",)
    list_filter = ("status",)
    list_select_related = ("emitted_by",)
    search_fields = ("trigger_ref",)
    search_id_fields = ("id", "source_event_id")
    date_hierarchy = "created"
    show_full_result_count = False
    list_per_page = 50
    fieldsets = (
        (None, {"fields": ("id", "trigger", "trigger_ref", "status_display", "error", "emitted_by", "source_event",
                           "created", "processed_at")}),
        ("Payload", {"fields": ("payload_pretty", "meta_pretty")}),
        ("Outcome", {"fields": ("enforcement_links", "executions_link", "re_emits_link")}),
    )

    @admin.display(description="trigger", ordering="trigger_ref")
    def trigger_link(self, obj):
        if obj.trigger_id is None:
            return obj.trigger_ref or EMPTY
        return admin_link(Trigger, obj.trigger_id, obj.trigger_ref)

    @admin.display(description="status", ordering="status")
    def status_display(self, obj):
        return status_html(obj.status)

    @admin.display(description="emitted by", ordering="emitted_by__username")
    def emitted_by_name(self, obj):
        return admin_link("accounts.User", obj.emitted_by_id, obj.emitted_by.username if obj.emitted_by_id else None)

    @admin.display(description="re-emits", ordering="source_event_id")
    def source_event_link(self, obj):
        return admin_link(Event, obj.source_event_id)

    @admin.display(description="payload")
    def payload_pretty(self, obj):
        return json_block(obj.payload)

    @admin.display(description="meta")
    def meta_pretty(self, obj):
        return json_block(obj.meta)

    @admin.display(description="enforcements")
    def enforcement_links(self, obj):
        # Reverse accessor only: the triggers layer does not import the rules layer.
        rows = obj.enforcements.order_by("id").values_list("id", "rule_ref", "status", "execution_id")[
            :ENFORCEMENTS_SHOWN
        ]
        if not rows:
            return EMPTY
        items = []
        for pk, rule_ref, status, execution_id in rows:
            execution = admin_link("executions.Execution", execution_id) if execution_id else EMPTY
            items.append((admin_link("rules.Enforcement", pk, f"#{pk} {rule_ref}"), status, execution))
        return format_html(
            "<ul style='margin: 0; padding-left: 1em'>{}</ul>",
            format_html_join("", "<li>{} — {} — execution {}</li>", items),
        )

    @admin.display(description="executions")
    def executions_link(self, obj):
        return changelist_link("executions.Execution", "executions started by this event",
                               trigger_event__id__exact=obj.pk)

    @admin.display(description="re-emitted as")
    def re_emits_link(self, obj):
        return changelist_link(Event, "events re-emitting this one", source_event__id__exact=obj.pk)
