"""Base viewsets: thin, ref-addressed, filterable."""
from __future__ import annotations

from rest_framework import mixins, viewsets

# Refs contain dots, which DRF's default lookup regex ([^/.]+) would cut off.
REF_LOOKUP_REGEX = r"[^/]+"


class RefLookupMixin:
    lookup_field = "ref"
    lookup_value_regex = REF_LOOKUP_REGEX


class ReadOnlyViewSet(viewsets.ReadOnlyModelViewSet):
    """Lists and details for records that are created by the system, not by API clients."""


class ModelViewSet(viewsets.ModelViewSet):
    pass


class CreateReadViewSet(mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet):
    """Append-only collections: create and read, never edit."""
