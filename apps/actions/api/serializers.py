from __future__ import annotations

from rest_framework import serializers

from apps.actions.models import Action
from apps.actions.schema import parameter_declaration_errors
from apps.packs.api.serializers import PackComponentSerializer
from apps.packs.models import Runtime


class ActionSerializer(PackComponentSerializer):
    runner_type = serializers.SlugRelatedField(slug_field="name", queryset=Runtime.objects.all())

    class Meta:
        model = Action
        fields = PackComponentSerializer.base_fields + [
            "runner_type", "entry_point", "timeout", "parameter_format", "output_format", "parameters", "enabled", "tags",
        ]

    def validate_parameters(self, value):
        errors = parameter_declaration_errors(value)
        if errors:
            raise serializers.ValidationError(errors)
        return value

    def validate_timeout(self, value: int) -> int:
        if value < 1:
            raise serializers.ValidationError("timeout must be at least 1 second")
        return value

    def validate(self, attrs):
        attrs = super().validate(attrs)
        runner = attrs.get("runner_type") or getattr(self.instance, "runner_type", None)
        entry_point = attrs.get("entry_point", getattr(self.instance, "entry_point", ""))
        if runner is not None and not runner.in_process and not entry_point:
            raise serializers.ValidationError({"entry_point": [f"runner_type {runner.name} needs an entry_point."]})
        if runner is not None and runner.kind == "workflow" and entry_point and not entry_point.startswith("workflows/"):
            raise serializers.ValidationError({"entry_point": ["workflow entry points live under workflows/."]})
        if (runner is not None and runner.kind == "workflow" and "timeout" not in attrs
                and (self.instance is None or not self.partial)):
            # A workflow may wait days on people: no timeout unless its metadata (or the request) gives one.
            attrs["timeout"] = 0
        return attrs
