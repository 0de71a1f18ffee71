"""Base viewsets: thin, ref-addressed, filterable."""
from __future__ import annotations

from rest_framework import viewsets

# Refs contain dots, which DRF's default lookup regex ([^/.]+) would cut off.
REF_LOOKUP_REGEX = r"[^/]+"


class RefLookupMixin:
    lookup_field = "ref"
    lookup_value_regex = REF_LOOKUP_REGEX


class PackScopedMixin:
    """Narrow the queryset to the packs the caller may see (a queryset restriction, not a post-filter).

    ``pack_lookup`` names the field holding the pack ref (``pack__ref``, ``pack_ref``…); ``None`` means the
    rows belong to no pack, so only callers with an unrestricted grant see them; ``"*"`` means the resource
    is global (any grant on it shows every row).
    """

    pack_lookup: str | None = "pack__ref"

    def get_queryset(self):
        from apps.accounts.permissions import visible_packs

        queryset = super().get_queryset()
        resource = getattr(self, "resource", None)
        user = getattr(self.request, "user", None)
        if resource is None or user is None or not user.is_authenticated or getattr(self, "swagger_fake_view", False):
            return queryset
        packs = visible_packs(user, resource)
        if packs is None:
            return queryset
        return self.restrict_to_packs(queryset, packs)

    def restrict_to_packs(self, queryset, packs):
        if self.pack_lookup == "*":
            return queryset
        if self.pack_lookup is None:
            return queryset.none()
        return queryset.filter(**{f"{self.pack_lookup}__in": sorted(packs)})


class ReadOnlyViewSet(PackScopedMixin, viewsets.ReadOnlyModelViewSet):
    """Lists and details for records that are created by the system, not by API clients."""


class ModelViewSet(PackScopedMixin, viewsets.ModelViewSet):
    pass
