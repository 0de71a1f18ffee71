from __future__ import annotations

from rest_framework import serializers

from apps.actions.models import Action
from apps.packs.api.serializers import PackComponentSerializer
from apps.rules.criteria import criteria_errors
from apps.rules.models import Enforcement, Rule
from apps.rules.timers import timer_params_errors
from apps.triggers.models import Trigger


class RuleSerializer(PackComponentSerializer):
    trigger = serializers.SlugRelatedField(slug_field="ref", queryset=Trigger.objects.all())
    action = serializers.SlugRelatedField(slug_field="ref", queryset=Action.objects.all())
    owner = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = Rule
        fields = PackComponentSerializer.base_fields + [
            "trigger", "trigger_params", "criteria", "condition", "action", "action_params", "enabled", "owner",
            "next_fire_at", "last_fired_at",
        ]
        read_only_fields = ["next_fire_at", "last_fired_at"]

    def validate(self, attrs):
        attrs = super().validate(attrs)
        trigger = attrs.get("trigger") or getattr(self.instance, "trigger", None)
        params = attrs.get("trigger_params", getattr(self.instance, "trigger_params", {}))
        if trigger is not None:
            errors = timer_params_errors(trigger.ref, params)
            if errors:
                raise serializers.ValidationError({"trigger_params": errors})
        # A rule runs its action as its owner (the caller): the caller must be allowed to execute it.
        request = self.context.get("request")
        action = attrs.get("action")
        if request is not None and action is not None:
            from apps.accounts.permissions import has_grant

            if not has_grant(request.user, "actions", "execute", action.pack.ref):
                raise serializers.ValidationError(
                    {"action": [f"you may not execute {action.ref}, so a rule of yours may not run it."]})
        return attrs

    def validate_criteria(self, value):
        errors = criteria_errors(value)
        if errors:
            raise serializers.ValidationError(errors)
        return value

    def validate_trigger_params(self, value):
        if not isinstance(value, dict):
            raise serializers.ValidationError("trigger_params must be an object")
        return value

    def validate_action_params(self, value):
        if not isinstance(value, dict):
            raise serializers.ValidationError("action_params must be an object")
        return value


class EnforcementSerializer(serializers.ModelSerializer):
    rule = serializers.CharField(source="rule_ref", read_only=True)

    class Meta:
        model = Enforcement
        fields = ["id", "rule", "event", "status", "criteria", "condition", "parameters", "execution",
                  "failure_reason", "created"]
        read_only_fields = fields


class RuleTestSerializer(serializers.Serializer):
    rule = serializers.JSONField(help_text="A rule body (as in rules/*.yaml) or the ref of a stored rule.")
    payload = serializers.JSONField(required=False, default=dict)


class RuleTestResultSerializer(serializers.Serializer):
    matched = serializers.BooleanField()
    criteria = serializers.ListField(child=serializers.DictField())
    condition = serializers.BooleanField(allow_null=True)
    parameters = serializers.DictField(allow_null=True)
    error = serializers.CharField(allow_null=True)
