from __future__ import annotations

import django_filters
from django.db.models import Q
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework.exceptions import PermissionDenied
from rest_framework.response import Response

from apps.accounts.permissions import has_grant
from apps.core.api.views import ModelViewSet
from apps.keys.models import Key, KeyScope

from .serializers import KeySerializer

DECRYPT_PARAM = OpenApiParameter(
    "decrypt", OpenApiTypes.BOOL, description="Show secret values in clear (needs the keys:decrypt grant)."
)


class KeyFilter(django_filters.FilterSet):
    name = django_filters.CharFilter()
    prefix = django_filters.CharFilter(field_name="name", lookup_expr="startswith")

    class Meta:
        model = Key
        fields = ["name", "prefix", "scope", "owner", "secret"]


@extend_schema_view(list=extend_schema(parameters=[DECRYPT_PARAM]), retrieve=extend_schema(parameters=[DECRYPT_PARAM]))
class KeyViewSet(ModelViewSet):
    resource = "keys"
    serializer_class = KeySerializer
    filterset_class = KeyFilter
    search_fields = ["name", "owner"]
    ordering_fields = ["name", "scope", "created", "updated"]

    queryset = Key.objects.select_related("created_by")

    def get_queryset(self):
        # Expired keys are invisible even before the scheduler purges them.
        now = timezone.now()
        return super().get_queryset().filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))

    def restrict_to_packs(self, queryset, packs):
        # Pack-limited callers see keys of their packs and of those packs' actions, never system/user keys.
        visible = Q(scope=KeyScope.PACK, owner__in=sorted(packs))
        for pack in packs:
            visible |= Q(scope=KeyScope.ACTION, owner__startswith=f"{pack}.")
        return queryset.filter(visible)

    def _check_target_pack(self, serializer) -> None:
        """The pack a created or changed key ends up in must be covered by the caller's grant (a system or
        user key by an unrestricted one): a grant limited to packs writes only its packs' keys."""
        data, instance = serializer.validated_data, serializer.instance
        target = Key(scope=data.get("scope", getattr(instance, "scope", KeyScope.SYSTEM)),
                     owner=data.get("owner", getattr(instance, "owner", "")))
        action = "create" if instance is None else "update"
        if not has_grant(self.request.user, "keys", action, target.pack_ref_for_permissions()):
            where = f"{target.scope} {target.owner}".strip()
            raise PermissionDenied(f"your keys:{action} grant does not cover {where} keys.")

    def perform_create(self, serializer):
        self._check_target_pack(serializer)
        super().perform_create(serializer)

    def perform_update(self, serializer):
        self._check_target_pack(serializer)
        super().perform_update(serializer)

    def get_serializer_context(self):
        context = super().get_serializer_context()
        wants = self.request.query_params.get("decrypt", "").lower() in {"1", "true", "yes"}
        if wants and self.request.method == "GET":
            if not has_grant(self.request.user, "keys", "decrypt"):
                raise PermissionDenied("decrypting secret keys needs the keys:decrypt grant.")
            # Each key is decrypted only if the grant covers its pack (system keys: unrestricted grants).
            user = self.request.user
            decrypted = self._decrypted = getattr(self, "_decrypted", {})

            def may_decrypt(key) -> bool:
                allowed = has_grant(user, "keys", "decrypt", key.pack_ref_for_permissions())
                if allowed and key.secret:
                    decrypted[key.pk] = key  # audited once the response is built
                return allowed

            context["may_decrypt"] = may_decrypt
        return context

    def _audit_decrypted(self) -> None:
        """One ``key.decrypt`` audit event per secret key shown in clear (names only, never values)."""
        from apps.accounts.audit import record

        for key in getattr(self, "_decrypted", {}).values():
            record(self.request.user, "key.decrypt", obj=key, request=self.request, object_ref=str(key),
                   via=self.action)
        self._decrypted = {}

    def list(self, request, *args, **kwargs):
        response = super().list(request, *args, **kwargs)
        self._audit_decrypted()
        return response

    def retrieve(self, request, *args, **kwargs):
        key = self.get_object()
        context = self.get_serializer_context()
        if "may_decrypt" in context and not context["may_decrypt"](key):
            raise PermissionDenied("your keys:decrypt grant does not cover this key.")
        response = Response(self.get_serializer(key, context=context).data)
        self._audit_decrypted()
        return response
