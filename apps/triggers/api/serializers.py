from __future__ import annotations

from rest_framework import serializers

from apps.core.api.serializers import check_json_schema
from apps.packs.api.serializers import PackComponentSerializer
from apps.packs.models import Runtime
from apps.triggers.models import Event, Sensor, Trigger


class TriggerSerializer(PackComponentSerializer):
    webhook_enabled = serializers.SerializerMethodField()

    class Meta:
        model = Trigger
        fields = PackComponentSerializer.base_fields + [
            "payload_schema", "parameters_schema", "enabled", "system", "webhook_enabled",
        ]
        read_only_fields = ["system"]

    def validate_payload_schema(self, value):
        return check_json_schema(value, "payload_schema")

    def validate_parameters_schema(self, value):
        return check_json_schema(value, "parameters_schema")

    def get_webhook_enabled(self, obj) -> bool:
        hook = getattr(obj, "webhook", None) if hasattr(obj, "_state") else None
        return bool(hook and hook.enabled)


class SensorSerializer(PackComponentSerializer):
    runner_type = serializers.SlugRelatedField(slug_field="name", queryset=Runtime.objects.all())
    trigger_types = serializers.SlugRelatedField(slug_field="ref", many=True, queryset=Trigger.objects.all())

    class Meta:
        model = Sensor
        fields = PackComponentSerializer.base_fields + [
            "runner_type", "entry_point", "trigger_types", "mode", "poll_interval", "enabled",
            "state", "pid", "host", "restarts", "last_started_at", "last_exit_code",
        ]
        read_only_fields = ["state", "pid", "host", "restarts", "last_started_at", "last_exit_code"]

    def validate(self, attrs):
        attrs = super().validate(attrs)
        mode = attrs.get("mode", getattr(self.instance, "mode", "daemon"))
        interval = attrs.get("poll_interval", getattr(self.instance, "poll_interval", None))
        if mode == "poll" and not interval:
            raise serializers.ValidationError({"poll_interval": ["poll sensors need a poll_interval (seconds)."]})
        return attrs


class EventSerializer(serializers.ModelSerializer):
    trigger = serializers.CharField(source="trigger_ref", read_only=True)

    class Meta:
        model = Event
        fields = ["id", "trigger", "payload", "meta", "status", "error", "source_event", "created", "processed_at"]
        read_only_fields = fields


class SensorStatusSerializer(serializers.ModelSerializer):
    running = serializers.SerializerMethodField()
    stderr_tail = serializers.CharField(source="last_stderr")

    class Meta:
        model = Sensor
        fields = ["ref", "enabled", "state", "running", "pid", "host", "restarts", "last_started_at",
                  "last_exit_code", "next_start_at", "stderr_tail"]
        read_only_fields = fields

    def get_running(self, obj) -> bool:
        return obj.state == "running"
