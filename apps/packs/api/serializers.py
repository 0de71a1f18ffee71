from __future__ import annotations

import re

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
