from __future__ import annotations

from django.contrib.auth import get_user_model, password_validation
from django.utils import timezone
from rest_framework import serializers

from apps.accounts.models import (
    ApiToken,
    AuditEvent,
    PermissionAssignment,
    PermissionSet,
    validate_grants,
)

User = get_user_model()


class IdentitySerializer(serializers.ModelSerializer):
    password = serializers.CharField(write_only=True, required=False, style={"input_type": "password"})
    permission_sets = serializers.SerializerMethodField()

    class Meta:
        model = User
        fields = ["id", "username", "email", "first_name", "last_name", "password", "is_service_account",
                  "is_active", "is_superuser", "permission_sets", "last_login", "date_joined"]
        read_only_fields = ["is_superuser", "last_login", "date_joined"]

    def get_permission_sets(self, obj) -> list[str]:
        return [a.permission_set.name for a in obj.assignments.all()]

    def validate(self, attrs):
        password = attrs.get("password")
        service = attrs.get("is_service_account", getattr(self.instance, "is_service_account", False))
        if self.instance is None and not password and not service:
            raise serializers.ValidationError({"password": ["a password is required for a person's identity."]})
        if password:
            candidate = self.instance or User(username=attrs.get("username", ""), email=attrs.get("email", ""))
            try:
                password_validation.validate_password(password, candidate)
            except Exception as exc:  # django ValidationError → field error
                raise serializers.ValidationError({"password": list(getattr(exc, "messages", [str(exc)]))}) from None
        return attrs

    def create(self, validated_data):
        password = validated_data.pop("password", None)
        user = User(**validated_data)
        if password:
            user.set_password(password)
        else:
            user.set_unusable_password()
        user.save()
        return user

    def update(self, instance, validated_data):
        password = validated_data.pop("password", None)
        for field, value in validated_data.items():
            setattr(instance, field, value)
        if password:
            instance.set_password(password)
        instance.save()
        return instance


class MeSerializer(serializers.ModelSerializer):
    permission_sets = serializers.SerializerMethodField()
    grants = serializers.SerializerMethodField()

    class Meta:
        model = User
        fields = ["id", "username", "email", "first_name", "last_name", "is_superuser", "is_service_account",
                  "permission_sets", "grants"]
        read_only_fields = ["username", "is_superuser", "is_service_account"]

    def get_permission_sets(self, obj) -> list[dict]:
        return [{"name": a.permission_set.name, "packs": a.packs} for a in obj.assignments.select_related("permission_set")]

    def get_grants(self, obj) -> list[dict]:
        from apps.accounts.permissions import grants_for

        if obj.is_superuser:
            return [{"resource": "*", "actions": ["*"], "packs": None}]
        return [{"resource": g.resource, "actions": sorted(g.actions), "packs": sorted(g.packs) if g.packs else None}
                for g in grants_for(obj)]


class RegisterSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(write_only=True, style={"input_type": "password"})
    email = serializers.EmailField(required=False, allow_blank=True)

    def validate_username(self, value):
        if User.objects.filter(username__iexact=value).exists():
            raise serializers.ValidationError("this username is taken.")
        return value

    def validate(self, attrs):
        try:
            password_validation.validate_password(attrs["password"], User(username=attrs["username"]))
        except Exception as exc:
            raise serializers.ValidationError({"password": list(getattr(exc, "messages", [str(exc)]))}) from None
        return attrs


class ChangePasswordSerializer(serializers.Serializer):
    old_password = serializers.CharField(write_only=True)
    new_password = serializers.CharField(write_only=True)

    def validate_old_password(self, value):
        if not self.context["request"].user.check_password(value):
            raise serializers.ValidationError("the current password is wrong.")
        return value

    def validate(self, attrs):
        try:
            password_validation.validate_password(attrs["new_password"], self.context["request"].user)
        except Exception as exc:
            raise serializers.ValidationError({"new_password": list(getattr(exc, "messages", [str(exc)]))}) from None
        return attrs


class ApiTokenSerializer(serializers.ModelSerializer):
    user = serializers.SlugRelatedField(
        slug_field="username", queryset=User.objects.all(), required=False,
        help_text="Issue for another identity (admins only, e.g. a service account). Default: yourself.",
    )
    is_active = serializers.BooleanField(read_only=True)

    class Meta:
        model = ApiToken
        fields = ["id", "name", "user", "prefix", "expires_at", "last_used_at", "revoked_at", "is_active", "created"]
        read_only_fields = ["prefix", "last_used_at", "revoked_at", "created"]

    def validate_expires_at(self, value):
        if value is not None and value <= timezone.now():
            raise serializers.ValidationError("must be in the future (leave it empty for a token that does not expire).")
        return value


class ApiTokenCreatedSerializer(ApiTokenSerializer):
    token = serializers.CharField(read_only=True, help_text="The token itself. Shown once; store it now.")

    class Meta(ApiTokenSerializer.Meta):
        fields = ApiTokenSerializer.Meta.fields + ["token"]


class PermissionSetSerializer(serializers.ModelSerializer):
    class Meta:
        model = PermissionSet
        fields = ["id", "name", "description", "grants", "builtin", "created", "updated"]
        read_only_fields = ["builtin"]

    def validate_grants(self, value):
        try:
            validate_grants(value)
        except Exception as exc:
            raise serializers.ValidationError(list(getattr(exc, "messages", [str(exc)]))) from None
        return value


class PermissionAssignmentSerializer(serializers.ModelSerializer):
    identity = serializers.SlugRelatedField(slug_field="username", queryset=User.objects.all())
    permission_set = serializers.SlugRelatedField(slug_field="name", queryset=PermissionSet.objects.all())

    class Meta:
        model = PermissionAssignment
        fields = ["id", "identity", "permission_set", "packs", "created"]
        validators: list = []  # uniqueness is checked in validate() with an error naming the field

    def validate_packs(self, value):
        if value is not None and (not isinstance(value, list) or not all(isinstance(p, str) for p in value)):
            raise serializers.ValidationError("packs must be a list of pack refs, or null for all packs.")
        return value or None

    def validate(self, attrs):
        identity = attrs.get("identity", getattr(self.instance, "identity", None))
        pset = attrs.get("permission_set", getattr(self.instance, "permission_set", None))
        clash = PermissionAssignment.objects.filter(identity=identity, permission_set=pset)
        if self.instance is not None:
            clash = clash.exclude(pk=self.instance.pk)
        if clash.exists():
            raise serializers.ValidationError({"permission_set": [f"{identity} already has {pset}."]})
        return attrs


class AuditEventSerializer(serializers.ModelSerializer):
    actor = serializers.CharField(source="actor_name", read_only=True,
                                  help_text="Username at the time (the attempted one for failed logins).")
    actor_id = serializers.IntegerField(read_only=True, allow_null=True)

    class Meta:
        model = AuditEvent
        fields = ["id", "created", "actor", "actor_id", "action", "object_type", "object_ref", "pack_ref", "details",
                  "remote_addr"]
        read_only_fields = fields
