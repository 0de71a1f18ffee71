from __future__ import annotations

from pathlib import Path

import django_filters
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response

from apps.accounts.audit import record
from apps.accounts.permissions import IsSuperuser, has_grant
from apps.actions.api.serializers import ActionSerializer
from apps.actions.models import Action
from apps.core.api.errors import Conflict
from apps.core.api.views import ModelViewSet, RefLookupMixin
from apps.executions.api.serializers import PolicySerializer
from apps.executions.models import Policy
from apps.packs import services
from apps.packs.models import Pack, Runtime
from apps.packs.registrar import PackError, register_pack
from apps.rules.api.serializers import RuleSerializer
from apps.rules.models import Rule
from apps.triggers.api.serializers import SensorSerializer, TriggerSerializer
from apps.triggers.models import Sensor, Trigger

from .serializers import (
    PackConfigSerializer,
    PackErrorSerializer,
    PackInstallSerializer,
    PackRegisterSerializer,
    PackRegistrationSerializer,
    PackSerializer,
    PackWorkflowSerializer,
    RuntimeSerializer,
)


class PackFilter(django_filters.FilterSet):
    class Meta:
        model = Pack
        fields = {"ref": ["exact", "startswith"], "source": ["exact"], "author": ["exact"]}


def _detail_schema(description: str):
    return inline_serializer(name=description, fields={"detail": serializers.CharField()})


DETAIL = _detail_schema("PackDetailError")
DECRYPT_PARAM = OpenApiParameter(
    "decrypt", OpenApiTypes.BOOL,
    description="Show secret config values in clear (needs the keys:decrypt grant for the pack).",
)


def _components():
    """kind → (grant resource, queryset of the kind with what its serializer reads, serializer class)."""
    return {
        "actions": ("actions", Action.objects.select_related("pack", "runner_type"), ActionSerializer),
        "rules": ("rules", Rule.objects.select_related("pack", "trigger", "action", "owner"), RuleSerializer),
        "triggers": ("triggers", Trigger.objects.select_related("pack", "webhook"), TriggerSerializer),
        "sensors": (
            "sensors",
            Sensor.objects.select_related("pack", "runner_type").prefetch_related("trigger_types"),
            SensorSerializer,
        ),
        "policies": ("policies", Policy.objects.select_related("pack", "action"), PolicySerializer),
        "workflows": (
            "workflows",
            Action.objects.filter(runner_type__kind="workflow").select_related("pack", "runner_type", "workflow"),
            PackWorkflowSerializer,
        ),
    }


def _component_schema(kind: str, serializer):
    return extend_schema(
        summary=f"The pack's {kind}",
        description=f"Paginated; needs the view grant on {kind} for this pack.",
        responses={200: serializer(many=True), 403: DETAIL, 404: DETAIL},
        filters=False,
    )


class PackViewSet(RefLookupMixin, ModelViewSet):
    resource = "packs"
    pack_lookup = "ref"
    pack_field = "ref"  # a pack's own ref is its pack: a pack-limited grant creates only its packs
    queryset = Pack.objects.all()
    serializer_class = PackSerializer
    filterset_class = PackFilter
    search_fields = ["ref", "label", "description"]
    ordering_fields = ["ref", "created", "updated"]
    action_permissions = {
        "install": "create",
        "config": "view",
        "update_config": "update",
        "actions": "view",
        "rules": "view",
        "triggers": "view",
        "sensors": "view",
        "workflows": "view",
        "policies": "view",
    }

    def _pack(self) -> Pack:
        """The pack in the URL, checked against the caller's grant (no list filters applied)."""
        pack = get_object_or_404(self.get_queryset(), ref=self.kwargs[self.lookup_field])
        self.check_object_permissions(self.request, pack)
        return pack

    @staticmethod
    def _registration(pack: Pack, result) -> dict:
        return {
            "pack": PackSerializer(pack).data,
            "created": result.created,
            "updated": result.updated,
            "removed": result.removed,
        }

    # --- register (superusers) -------------------------------------------------------------------
    @extend_schema(
        summary="Register a pack directory on the server (superusers only)",
        request=PackRegisterSerializer,
        responses={
            200: OpenApiResponse(PackRegistrationSerializer, description="Re-registered an existing pack."),
            201: OpenApiResponse(PackRegistrationSerializer, description="Registered a new pack."),
            400: OpenApiResponse(PackErrorSerializer, description="The pack has errors (nothing was written), "
                                 "or `path` is not a directory."),
            403: DETAIL,
        },
    )
    @action(detail=False, methods=["post"], permission_classes=[IsSuperuser])
    def register(self, request):
        body = PackRegisterSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        path = body.validated_data["path"]
        try:
            ref = services.manifest_ref(Path(path).resolve())
        except PackError:
            ref = None  # register_pack reports it with every other error
        existed = ref is not None and Pack.objects.filter(ref=ref).exists()
        try:
            result = register_pack(path)
        except PackError as exc:
            return Response(
                {"detail": f"pack at {exc.path} has {len(exc.errors)} error(s)", "errors": exc.errors},
                status=status.HTTP_400_BAD_REQUEST,
            )
        pack = Pack.objects.get(ref=result.pack)
        return Response(self._registration(pack, result), status=status.HTTP_200_OK if existed else status.HTTP_201_CREATED)

    # --- install (packs:create) ------------------------------------------------------------------
    @extend_schema(
        summary="Install a pack from an uploaded .tar.gz",
        description=(
            "The archive holds pack.yaml at its root or in its single top-level directory. It is unpacked "
            "safely (no absolute paths, '..', links leaving the pack or special files; at most "
            f"{services.MAX_INSTALL_MEMBERS} members and {services.MAX_INSTALL_BYTES // (1024 * 1024)} MiB), "
            "installed under ATTUNE_HOME/packs/<ref> (replacing an installed copy only once the new one "
            "registers) and registered. Needs packs:create for the pack's ref (and packs:update to replace it)."
        ),
        request={"multipart/form-data": PackInstallSerializer},
        responses={
            200: OpenApiResponse(PackRegistrationSerializer, description="Replaced an installed pack."),
            201: OpenApiResponse(PackRegistrationSerializer, description="Installed a new pack."),
            400: OpenApiResponse(PackErrorSerializer, description="Not a .tar.gz, unsafe, no pack.yaml, or the "
                                 "pack has errors (`errors` lists them)."),
            403: DETAIL,
            409: OpenApiResponse(DETAIL, description="The ref belongs to a shipped pack or to a pack registered "
                                 "from another directory."),
        },
    )
    @action(detail=False, methods=["post"], parser_classes=[MultiPartParser, FormParser])
    def install(self, request):
        body = PackInstallSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        upload = body.validated_data["file"]
        if upload.size is not None and upload.size > services.MAX_INSTALL_BYTES:
            raise ValidationError({"file": [f"the upload is larger than {services.MAX_INSTALL_BYTES} bytes"]})
        user = request.user

        def authorize(ref: str, existing: Pack | None) -> None:
            if not has_grant(user, "packs", "create", ref):
                raise PermissionDenied(f"your packs:create grant does not cover pack {ref}.")
            if existing is not None and not has_grant(user, "packs", "update", ref):
                raise PermissionDenied(f"pack {ref} is installed; replacing it needs the packs:update grant.")

        try:
            installed = services.install_pack(upload, authorize=authorize)
        except services.InstallError as exc:
            raise ValidationError({exc.field: [exc.message]} if exc.field else {"detail": exc.message}) from None
        except services.InstallConflict as exc:
            raise Conflict(str(exc)) from None
        except PackError as exc:
            return Response(
                {"detail": f"pack in {upload.name} has {len(exc.errors)} error(s)", "errors": exc.errors},
                status=status.HTTP_400_BAD_REQUEST,
            )
        return Response(
            self._registration(installed.pack, installed.registration),
            status=status.HTTP_201_CREATED if installed.created else status.HTTP_200_OK,
        )

    # --- config ----------------------------------------------------------------------------------
    @extend_schema(
        summary="The pack's config (secrets redacted)",
        parameters=[DECRYPT_PARAM],
        responses={200: PackConfigSerializer, 403: DETAIL, 404: DETAIL},
        filters=False,
    )
    @action(detail=True, methods=["get"])
    def config(self, request, ref=None):
        pack = self._pack()
        wants = request.query_params.get("decrypt", "").lower() in {"1", "true", "yes"}
        if wants:
            if not has_grant(request.user, "keys", "decrypt", pack.ref):
                raise PermissionDenied("decrypting pack config secrets needs the keys:decrypt grant for this pack.")
            values = services.pack_config(pack)
            record(request.user, "pack_config.decrypt", obj=pack, request=request)
        else:
            values = services.redacted_pack_config(pack)
        return Response({"pack": pack.ref, "config": values})

    @extend_schema(
        summary="Replace the pack's config",
        description=(
            "Validated against config_schema after applying top-level defaults; fields declared "
            '`secret: true` are stored encrypted and read back as "********" (sending that marker keeps '
            "the stored secret)."
        ),
        request=PackConfigSerializer,
        responses={
            200: PackConfigSerializer,
            400: OpenApiResponse(
                inline_serializer("PackConfigError", {"config": serializers.ListField(child=serializers.CharField())}),
                description='Every failing field, as "<path>: <message>".',
            ),
            403: DETAIL,
            404: DETAIL,
        },
        filters=False,
    )
    @config.mapping.put
    def update_config(self, request, ref=None):
        pack = self._pack()
        body = PackConfigSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            services.set_pack_config(pack, body.validated_data["config"])
        except services.ConfigError as exc:
            raise ValidationError({"config": exc.errors}) from None
        return Response({"pack": pack.ref, "config": services.redacted_pack_config(pack)})

    # --- component lists -------------------------------------------------------------------------
    def _component_list(self, kind: str):
        pack = self._pack()
        resource, queryset, serializer_class = _components()[kind]
        if not has_grant(self.request.user, resource, "view", pack.ref):
            raise PermissionDenied(f"listing {kind} needs the {resource}:view grant for pack {pack.ref}.")
        page = self.paginate_queryset(queryset.filter(pack=pack).order_by("ref"))
        data = serializer_class(page, many=True, context=self.get_serializer_context()).data
        return self.get_paginated_response(data)

    @_component_schema("actions", ActionSerializer)
    @action(detail=True, methods=["get"])
    def actions(self, request, ref=None):
        return self._component_list("actions")

    @_component_schema("rules", RuleSerializer)
    @action(detail=True, methods=["get"])
    def rules(self, request, ref=None):
        return self._component_list("rules")

    @_component_schema("triggers", TriggerSerializer)
    @action(detail=True, methods=["get"])
    def triggers(self, request, ref=None):
        return self._component_list("triggers")

    @_component_schema("sensors", SensorSerializer)
    @action(detail=True, methods=["get"])
    def sensors(self, request, ref=None):
        return self._component_list("sensors")

    @_component_schema("workflows", PackWorkflowSerializer)
    @action(detail=True, methods=["get"])
    def workflows(self, request, ref=None):
        return self._component_list("workflows")

    @_component_schema("policies", PolicySerializer)
    @action(detail=True, methods=["get"])
    def policies(self, request, ref=None):
        return self._component_list("policies")


class RuntimeViewSet(ModelViewSet):
    resource = "runtimes"
    pack_lookup = "*"  # runtimes are global: any runtimes grant shows them all
    lookup_field = "name"
    queryset = Runtime.objects.all()
    serializer_class = RuntimeSerializer
    filterset_fields = ["kind", "enabled"]
    search_fields = ["name", "description"]
    ordering_fields = ["name", "created"]
