from __future__ import annotations

import re

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from apps.core.api.serializers import check_json_schema
from apps.core.refs import make_ref
from apps.packs.models import Pack, Runtime

SEMVER_RE = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")


class PackSerializer(serializers.ModelSerializer):
    class Meta:
        model = Pack
        fields = [
            "id", "ref", "label", "description", "version", "author", "email", "dependencies", "config_schema",
            "source", "path", "registered_at", "created", "updated",
        ]
        read_only_fields = ["source", "path", "registered_at"]

    def validate_ref(self, value: str) -> str:
        if self.instance is not None and value != self.instance.ref:
            raise serializers.ValidationError("a pack's ref cannot change (components and executions refer to it).")
        return value

    def validate_version(self, value: str) -> str:
        if not SEMVER_RE.match(value):
            raise serializers.ValidationError(f"{value!r} is not a semantic version (MAJOR.MINOR.PATCH).")
        return value

    def validate_dependencies(self, value):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise serializers.ValidationError("dependencies must be a list of pack refs")
        return value

    def validate_config_schema(self, value):
        return check_json_schema(value, "config_schema")


class RuntimeSerializer(serializers.ModelSerializer):
    in_process = serializers.BooleanField(read_only=True)

    class Meta:
        model = Runtime
        fields = ["id", "name", "kind", "description", "interpreter", "queue", "enabled", "in_process", "created", "updated"]

    def validate_name(self, value: str) -> str:
        if self.instance is not None and value != self.instance.name:
            raise serializers.ValidationError("a runtime's name cannot change (actions refer to it as runner_type).")
        return value


class PackComponentSerializer(serializers.ModelSerializer):
    """``pack`` by ref, ``name`` validated, ``ref`` derived; a clash on ref is a 400 naming ``name``."""

    pack = serializers.SlugRelatedField(slug_field="ref", queryset=Pack.objects.all())
    ref = serializers.CharField(read_only=True)
    source = serializers.CharField(read_only=True)

    base_fields = ["id", "ref", "pack", "name", "description", "source", "created", "updated"]

    def validate(self, attrs):
        attrs = super().validate(attrs)
        pack = attrs.get("pack") or getattr(self.instance, "pack", None)
        name = attrs.get("name") or getattr(self.instance, "name", None)
        if pack is not None and name:
            ref = make_ref(pack.ref, name)
            clash = self.Meta.model.objects.filter(ref=ref)
            if self.instance is not None:
                clash = clash.exclude(pk=self.instance.pk)
            if clash.exists():
                raise serializers.ValidationError({"name": [f"{ref} already exists."]})
        return attrs


# --- bodies of the pack endpoints (register, install, config, workflows) ----------------------------------


class PackRegisterSerializer(serializers.Serializer):
    path = serializers.CharField(help_text="Absolute path of a pack directory on the server.")

    def validate_path(self, value: str) -> str:
        from pathlib import Path

        path = Path(value)
        if not path.is_absolute():
            raise serializers.ValidationError("must be an absolute path on the server.")
        if not path.exists():
            raise serializers.ValidationError(f"{value} does not exist.")
        if not path.is_dir():
            raise serializers.ValidationError(f"{value} is not a directory.")
        return value


class PackInstallSerializer(serializers.Serializer):
    file = serializers.FileField(
        help_text="The pack as a .tar.gz archive (pack.yaml at its root or in its one top-level directory)."
    )


class PackRegistrationSerializer(serializers.Serializer):
    """What registering or installing a pack did: per kind (actions, rules…), how many rows."""

    pack = PackSerializer()
    created = serializers.DictField(child=serializers.IntegerField())
    updated = serializers.DictField(child=serializers.IntegerField())
    removed = serializers.DictField(child=serializers.IntegerField())


class PackErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()
    errors = serializers.ListField(child=serializers.CharField(), help_text='Every problem, as "file: field: message".')


class PackConfigSerializer(serializers.Serializer):
    """A pack's config. Secret fields (``secret: true`` in config_schema) read as ``"********"``; sending that
    marker back keeps the stored secret."""

    pack = serializers.CharField(read_only=True)
    config = serializers.JSONField(help_text="Config values, validated against the pack's config_schema.")

    def validate_config(self, value):
        if not isinstance(value, dict):
            raise serializers.ValidationError("config: must be an object of config name to value")
        return value


class PackWorkflowSerializer(serializers.Serializer):
    """A workflow action of a pack with its registered definition."""

    ref = serializers.CharField()
    description = serializers.CharField()
    entry_point = serializers.CharField()
    enabled = serializers.BooleanField()
    valid = serializers.SerializerMethodField()
    errors = serializers.SerializerMethodField()
    definition = serializers.SerializerMethodField()

    @staticmethod
    def _definition(obj):
        return getattr(obj, "workflow", None)

    def get_valid(self, obj) -> bool:
        definition = self._definition(obj)
        return bool(definition is not None and definition.valid)

    @extend_schema_field(serializers.ListField(child=serializers.JSONField()))
    def get_errors(self, obj):
        definition = self._definition(obj)
        if definition is None:
            return [f"no workflow definition registered (entry_point {obj.entry_point})"]
        return definition.errors or []

    @extend_schema_field(serializers.JSONField(allow_null=True))
    def get_definition(self, obj):
        definition = self._definition(obj)
        return None if definition is None else definition.definition
