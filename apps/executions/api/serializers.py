from __future__ import annotations

from rest_framework import serializers

from apps.actions.models import Action
from apps.core.api.serializers import CachedFieldsMixin
from apps.core.statuses import ExecutionStatus
from apps.executions.models import Artifact, Execution, Policy, Worker
from apps.executions.selectors import queue_position
from apps.packs.api.serializers import PackComponentSerializer


class ExecutionSerializer(CachedFieldsMixin, serializers.ModelSerializer):
    action = serializers.CharField(source="action_ref", read_only=True)
    pack = serializers.CharField(source="pack_ref", read_only=True)
    children = serializers.SerializerMethodField()
    started_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    worker = serializers.SlugRelatedField(slug_field="name", read_only=True)
    rule = serializers.SlugRelatedField(slug_field="ref", read_only=True)
    duration_ms = serializers.IntegerField(read_only=True, allow_null=True)
    queue_position = serializers.SerializerMethodField()

    class Meta:
        model = Execution
        fields = [
            "id", "action", "pack", "runner_type", "status", "parameters", "result", "parent", "children",
            "enforcement", "rule", "trigger_event", "started_by", "worker", "original", "task_name", "item_index",
            "created", "scheduled_at", "started_at", "finished_at", "duration_ms", "queue_position", "waiting_reason",
        ]
        read_only_fields = fields

    def get_children(self, obj) -> list[int]:
        # The list view prefetches children ids; a detail read costs one query; a new execution has none.
        known = getattr(obj, "children_ids", None)
        if known is not None:
            return list(known)
        return [child.pk for child in obj.children.all()]

    def get_queue_position(self, obj) -> int | None:
        if obj.status != ExecutionStatus.DELAYED:
            return None
        annotated = getattr(obj, "queue_position", None)  # set by the list/detail queryset
        return annotated if annotated is not None else queue_position(obj)


class WorkerSerializer(serializers.ModelSerializer):
    class Meta:
        model = Worker
        fields = ["id", "name", "hostname", "pid", "queues", "runtimes", "concurrency", "running", "state", "mode",
                  "started_at", "last_heartbeat"]
        read_only_fields = fields


class ArtifactSerializer(serializers.ModelSerializer):
    class Meta:
        model = Artifact
        fields = ["id", "execution", "name", "content_type", "size", "data", "created"]
        read_only_fields = fields


POLICY_FIELDS = {
    "concurrency": {"required": ["threshold"], "allowed": {"threshold", "attributes", "on_limit"}},
    "rate_limit": {"required": ["limit", "window_seconds"], "allowed": {"limit", "window_seconds", "on_limit"}},
    "retry": {"required": ["max_retries"], "allowed": {"on", "max_retries", "delay_seconds", "backoff"}},
}
RETRY_ON = {"failure", "timeout"}


class PolicySerializer(PackComponentSerializer):
    action = serializers.SlugRelatedField(slug_field="ref", queryset=Action.objects.all())

    class Meta:
        model = Policy
        fields = PackComponentSerializer.base_fields + [
            "action", "type", "enabled", "threshold", "attributes", "on_limit", "limit", "window_seconds", "on",
            "max_retries", "delay_seconds", "backoff",
        ]

    def validate(self, attrs):
        attrs = super().validate(attrs)
        policy_type = attrs.get("type", getattr(self.instance, "type", None))
        spec = POLICY_FIELDS.get(policy_type)
        errors: dict[str, list[str]] = {}
        if spec is not None:
            for name in spec["required"]:
                value = attrs.get(name, getattr(self.instance, name, None))
                if value in (None, 0):
                    errors[name] = [f"a {policy_type} policy needs {name} (a positive number)."]
        attributes = attrs.get("attributes")
        if attributes is not None and (
            not isinstance(attributes, list) or not all(isinstance(a, str) for a in attributes)
        ):
            errors["attributes"] = ["attributes must be a list of parameter names."]
        on = attrs.get("on")
        if on is not None and (not isinstance(on, list) or not set(on) <= RETRY_ON):
            errors["on"] = ["on must be a list drawn from: failure, timeout."]
        if errors:
            raise serializers.ValidationError(errors)
        return attrs


class ExecuteSerializer(serializers.Serializer):
    parameters = serializers.DictField(required=False, default=dict, help_text="Parameter name → value.")
    timeout = serializers.IntegerField(required=False, min_value=1, help_text="Seconds; overrides the action's.")


class ExecutionCreateSerializer(ExecuteSerializer):
    action = serializers.CharField(help_text="Action ref, e.g. core.echo")


class RerunSerializer(serializers.Serializer):
    parameters = serializers.DictField(required=False, default=dict, help_text="Overrides of the original's.")
    tasks = serializers.ListField(child=serializers.CharField(), required=False, default=list,
                                  help_text="Workflows: re-run from these tasks (the tasks before keep their results).")
    from_task = serializers.CharField(required=False, help_text="Workflows: re-run from this task (SPEC §11).")


class OutputSerializer(serializers.Serializer):
    stream = serializers.ChoiceField(choices=["stdout", "stderr"])
    offset = serializers.IntegerField()
    next_offset = serializers.IntegerField()
    data = serializers.CharField()
    complete = serializers.BooleanField(help_text="The execution ended: no more output will come.")
    truncated = serializers.BooleanField()
    status = serializers.CharField()
