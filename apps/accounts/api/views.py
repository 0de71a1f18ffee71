from __future__ import annotations

import django_filters
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Prefetch
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import generics, mixins, status, viewsets
from rest_framework.exceptions import PermissionDenied
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework_simplejwt.views import TokenObtainPairView, TokenRefreshView

from apps.accounts.audit import assignment_facts, object_ref_of, record
from apps.accounts.models import ApiToken, AuditEvent, PermissionAssignment, PermissionSet
from apps.accounts.throttling import LoginRateThrottle
from apps.core.api.errors import Conflict
from apps.core.api.views import ModelViewSet, ReadOnlyViewSet

from .serializers import (
    ApiTokenCreatedSerializer,
    ApiTokenSerializer,
    AuditEventSerializer,
    ChangePasswordSerializer,
    IdentitySerializer,
    MeSerializer,
    PermissionAssignmentSerializer,
    PermissionSetSerializer,
    RegisterSerializer,
)

User = get_user_model()


class LoginView(TokenObtainPairView):
    """``{username, password}`` → ``{access, refresh}``. Throttled against password guessing.

    Audited: ``login`` here, ``login_failed`` by the authentication signal, ``login_throttled`` below."""

    throttle_classes = [LoginRateThrottle]
    throttle_scope = "login"

    def post(self, request, *args, **kwargs):
        response = super().post(request, *args, **kwargs)
        if response.status_code == status.HTTP_200_OK:
            user = User.objects.filter(username=request.data.get("username")).first()
            if user is not None:
                record(user, "login", obj=user, request=request, object_type="identity", via="jwt")
        return response

    def throttled(self, request, wait):
        username = str(request.data.get("username") or "") if isinstance(request.data, dict) else ""
        record(None, "login_throttled", request=request, actor_name=username, object_type="identity",
               object_ref=username, retry_after_seconds=round(wait) if wait else None)
        super().throttled(request, wait)


class RefreshView(TokenRefreshView):
    """``{refresh}`` → ``{access}``."""


class RegisterView(generics.GenericAPIView):
    """Self-service sign-up, only when ``ATTUNE_ALLOW_REGISTRATION`` is on. New identities get no grants."""

    permission_classes = [AllowAny]
    authentication_classes: list = []
    serializer_class = RegisterSerializer
    throttle_classes = [LoginRateThrottle]
    throttle_scope = "login"

    @extend_schema(responses={201: MeSerializer})
    def post(self, request):
        if not settings.ATTUNE_ALLOW_REGISTRATION:
            raise PermissionDenied("registration is disabled on this server (ATTUNE_ALLOW_REGISTRATION).")
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        user = User.objects.create_user(username=data["username"], password=data["password"], email=data.get("email", ""))
        return Response(MeSerializer(user).data, status=status.HTTP_201_CREATED)


class MeView(generics.RetrieveUpdateAPIView):
    """The caller: identity, permission sets, effective grants."""

    serializer_class = MeSerializer
    http_method_names = ["get", "patch", "options", "head"]

    def get_object(self):
        return self.request.user


class ChangePasswordView(generics.GenericAPIView):
    serializer_class = ChangePasswordSerializer

    @extend_schema(responses={204: None})
    def post(self, request):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        request.user.set_password(serializer.validated_data["new_password"])
        request.user.save(update_fields=["password"])
        return Response(status=status.HTTP_204_NO_CONTENT)


class ApiTokenViewSet(mixins.CreateModelMixin, mixins.DestroyModelMixin, viewsets.ReadOnlyModelViewSet):
    """Your API tokens. Create shows the token once; delete revokes it (the record stays)."""

    serializer_class = ApiTokenSerializer
    filterset_fields = ["name"]
    ordering_fields = ["created", "last_used_at", "name"]

    queryset = ApiToken.objects.none()  # for the schema; get_queryset scopes to the caller

    def get_queryset(self):
        qs = ApiToken.objects.select_related("user")
        if getattr(self, "swagger_fake_view", False):
            return qs.none()
        if self.request.user.is_superuser:
            wanted = self.request.query_params.get("user")
            return qs.filter(user__username=wanted) if wanted else qs
        return qs.filter(user=self.request.user)

    @extend_schema(responses={201: ApiTokenCreatedSerializer})
    def create(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        owner = serializer.validated_data.get("user") or request.user
        if owner != request.user and not request.user.is_superuser:
            raise PermissionDenied("only admins may issue tokens for another identity.")
        token, raw = ApiToken.issue(owner, serializer.validated_data["name"], serializer.validated_data.get("expires_at"))
        record(request.user, "api_token.create", obj=token, request=request, object_ref=str(token.pk),
               owner=owner.username, name=token.name, prefix=token.prefix,
               expires_at=token.expires_at.isoformat() if token.expires_at else None)
        token.token = raw
        return Response(ApiTokenCreatedSerializer(token).data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance):
        if instance.revoked_at is None:
            instance.revoked_at = timezone.now()
            instance.save(update_fields=["revoked_at", "updated"])
            record(self.request.user, "api_token.revoke", obj=instance, request=self.request,
                   object_ref=str(instance.pk), owner=instance.user.username, name=instance.name,
                   prefix=instance.prefix)


class AuditedMixin:
    """Record ``<audit_type>.create|update|delete`` for every write through the viewset."""

    audit_type = ""

    def audit_facts(self, obj) -> dict:
        return {}

    def _audit(self, verb: str, obj, **extra) -> None:
        record(self.request.user, f"{self.audit_type}.{verb}", obj=obj, request=self.request,
               object_type=self.audit_type, **self.audit_facts(obj), **extra)

    def perform_create(self, serializer):
        super().perform_create(serializer)
        self._audit("create", serializer.instance)

    def perform_update(self, serializer):
        super().perform_update(serializer)
        changed = sorted(k for k in serializer.validated_data if k != "password")
        if "password" in serializer.validated_data:
            changed.append("password (changed)")
        self._audit("update", serializer.instance, fields=changed)

    def perform_destroy(self, instance):
        facts = self.audit_facts(instance)
        ref = object_ref_of(instance)
        super().perform_destroy(instance)
        record(self.request.user, f"{self.audit_type}.delete", request=self.request, object_type=self.audit_type,
               object_ref=ref, pack_ref="", **facts)


class IdentityViewSet(AuditedMixin, ModelViewSet):
    resource = "identities"
    audit_type = "identity"
    pack_lookup = None
    lookup_field = "username"
    lookup_value_regex = r"[^/]+"
    serializer_class = IdentitySerializer
    queryset = User.objects.prefetch_related(
        Prefetch("assignments", queryset=PermissionAssignment.objects.select_related("permission_set"))
    )
    filterset_fields = ["is_service_account", "is_active", "is_superuser"]
    search_fields = ["username", "email", "first_name", "last_name"]
    ordering_fields = ["username", "date_joined", "last_login"]

    def audit_facts(self, obj) -> dict:
        return {"is_service_account": obj.is_service_account, "is_active": obj.is_active}

    def perform_destroy(self, instance):
        if instance == self.request.user:
            raise Conflict("you cannot delete your own identity.")
        super().perform_destroy(instance)


class PermissionSetViewSet(AuditedMixin, ModelViewSet):
    resource = "permission_sets"
    audit_type = "permission_set"
    pack_lookup = None
    lookup_field = "name"
    lookup_value_regex = r"[^/]+"
    queryset = PermissionSet.objects.all()
    serializer_class = PermissionSetSerializer
    filterset_fields = ["builtin"]
    search_fields = ["name", "description"]

    def audit_facts(self, obj) -> dict:
        return {"grants": obj.grants}

    def perform_update(self, serializer):
        if serializer.instance.builtin:
            raise Conflict("built-in permission sets cannot be changed; create your own set instead.")
        super().perform_update(serializer)

    def perform_destroy(self, instance):
        if instance.builtin:
            raise Conflict("built-in permission sets cannot be deleted.")
        super().perform_destroy(instance)


class PermissionAssignmentViewSet(AuditedMixin, ModelViewSet):
    resource = "permission_assignments"
    audit_type = "permission_assignment"
    pack_lookup = None
    queryset = PermissionAssignment.objects.select_related("identity", "permission_set")
    serializer_class = PermissionAssignmentSerializer
    filterset_fields = {"identity__username": ["exact"], "permission_set__name": ["exact"]}
    ordering_fields = ["created"]

    def audit_facts(self, obj) -> dict:
        return assignment_facts(obj)




class AuditEventFilter(django_filters.FilterSet):
    actor = django_filters.CharFilter(field_name="actor_name", help_text="Username (as recorded).")
    action = django_filters.CharFilter(help_text='Exact action, e.g. "login_failed".')
    action_prefix = django_filters.CharFilter(field_name="action", lookup_expr="startswith",
                                              help_text='e.g. "permission_set." for every change of a set.')
    pack = django_filters.CharFilter(field_name="pack_ref")
    since = django_filters.IsoDateTimeFilter(field_name="created", lookup_expr="gte")
    until = django_filters.IsoDateTimeFilter(field_name="created", lookup_expr="lt")

    class Meta:
        model = AuditEvent
        fields = ["actor", "action", "action_prefix", "object_type", "object_ref", "pack", "since", "until"]


class AuditEventViewSet(ReadOnlyViewSet):
    """The audit log, newest first: admins (or an ``audit:view`` grant; a pack-limited one sees its packs'
    events only)."""

    resource = "audit"
    pack_lookup = "pack_ref"
    queryset = AuditEvent.objects.all()
    serializer_class = AuditEventSerializer
    filterset_class = AuditEventFilter
    ordering_fields = ["created", "id", "action", "actor_name", "object_type"]
    ordering = ["-created", "-id"]
