from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Prefetch
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import generics, mixins, status, viewsets
from rest_framework.exceptions import PermissionDenied
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework_simplejwt.views import TokenObtainPairView, TokenRefreshView

from apps.accounts.models import ApiToken, PermissionAssignment, PermissionSet
from apps.core.api.errors import Conflict
from apps.core.api.views import ModelViewSet

from .serializers import (
    ApiTokenCreatedSerializer,
    ApiTokenSerializer,
    ChangePasswordSerializer,
    IdentitySerializer,
    MeSerializer,
    PermissionAssignmentSerializer,
    PermissionSetSerializer,
    RegisterSerializer,
)

User = get_user_model()


class LoginView(TokenObtainPairView):
    """``{username, password}`` → ``{access, refresh}``. Throttled against password guessing."""

    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "login"


class RefreshView(TokenRefreshView):
    """``{refresh}`` → ``{access}``."""


class RegisterView(generics.GenericAPIView):
    """Self-service sign-up, only when ``ATTUNE_ALLOW_REGISTRATION`` is on. New identities get no grants."""

    permission_classes = [AllowAny]
    authentication_classes: list = []
    serializer_class = RegisterSerializer
    throttle_classes = [ScopedRateThrottle]
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
        token.token = raw
        return Response(ApiTokenCreatedSerializer(token).data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance):
        if instance.revoked_at is None:
            instance.revoked_at = timezone.now()
            instance.save(update_fields=["revoked_at", "updated"])


class IdentityViewSet(ModelViewSet):
    resource = "identities"
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

    def perform_destroy(self, instance):
        if instance == self.request.user:
            raise Conflict("you cannot delete your own identity.")
        instance.delete()


class PermissionSetViewSet(ModelViewSet):
    resource = "permission_sets"
    pack_lookup = None
    lookup_field = "name"
    lookup_value_regex = r"[^/]+"
    queryset = PermissionSet.objects.all()
    serializer_class = PermissionSetSerializer
    filterset_fields = ["builtin"]
    search_fields = ["name", "description"]

    def perform_update(self, serializer):
        if serializer.instance.builtin:
            raise Conflict("built-in permission sets cannot be changed; create your own set instead.")
        serializer.save()

    def perform_destroy(self, instance):
        if instance.builtin:
            raise Conflict("built-in permission sets cannot be deleted.")
        instance.delete()


class PermissionAssignmentViewSet(ModelViewSet):
    resource = "permission_assignments"
    pack_lookup = None
    queryset = PermissionAssignment.objects.select_related("identity", "permission_set")
    serializer_class = PermissionAssignmentSerializer
    filterset_fields = {"identity__username": ["exact"], "permission_set__name": ["exact"]}
    ordering_fields = ["created"]


