from __future__ import annotations

from rest_framework import serializers

from apps.keys import services
from apps.keys.models import Key, KeyScope


class KeySerializer(serializers.ModelSerializer):
    value = serializers.JSONField(help_text="Any JSON value. Secret values read back as '********'.")
    ttl_seconds = serializers.IntegerField(write_only=True, required=False, allow_null=True, min_value=1)
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = Key
        fields = ["id", "name", "scope", "owner", "value", "secret", "ttl_seconds", "expires_at", "key_version",
                  "created_by", "created", "updated"]
        read_only_fields = ["expires_at", "key_version"]
        validators: list = []  # uniqueness is checked in validate() with an error naming the field

    def to_representation(self, instance):
        data = super().to_representation(instance)
        may_decrypt = self.context.get("may_decrypt")
        decrypt = may_decrypt is not None and may_decrypt(instance)
        data["value"] = services.plain_value(instance) if decrypt else services.redacted_value(instance)
        return data


    def validate(self, attrs):
        scope = attrs.get("scope", getattr(self.instance, "scope", KeyScope.SYSTEM))
        owner = attrs.get("owner", getattr(self.instance, "owner", ""))
        if scope == KeyScope.SYSTEM and owner:
            raise serializers.ValidationError({"owner": ["system-scoped keys have no owner."]})
        if scope != KeyScope.SYSTEM and not owner:
            raise serializers.ValidationError({"owner": [f"{scope}-scoped keys need an owner."]})
        name = attrs.get("name", getattr(self.instance, "name", None))
        clash = Key.objects.filter(scope=scope, owner=owner, name=name)
        if self.instance is not None:
            clash = clash.exclude(pk=self.instance.pk)
        if clash.exists():
            raise serializers.ValidationError({"name": [f"key {name!r} already exists in scope {scope}."]})
        return attrs

    def _write(self, key: Key, validated: dict) -> Key:
        # The ciphertext is bound to scope/owner/name: read the old value before any of them changes.
        old_value = services.plain_value(key) if key.pk is not None else None
        identity_changed = False
        for field in ("name", "scope", "owner"):
            if field in validated and validated[field] != getattr(key, field):
                setattr(key, field, validated[field])
                identity_changed = True
        secret = validated.get("secret", key.secret)
        if "value" in validated:
            services.apply_value(key, validated["value"], secret)
        elif secret != key.secret or (secret and identity_changed):
            services.apply_value(key, old_value, secret)
        if "ttl_seconds" in validated:
            services.apply_ttl(key, validated["ttl_seconds"])
        key.save()
        return key

    def create(self, validated_data):
        key = Key(created_by=self.context["request"].user)
        return self._write(key, validated_data)

    def update(self, instance, validated_data):
        return self._write(instance, validated_data)
