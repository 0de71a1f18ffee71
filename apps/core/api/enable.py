"""``POST {ref}/enable`` and ``POST {ref}/disable`` for resources with an ``enabled`` flag."""
from __future__ import annotations

from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework.decorators import action as route
from rest_framework.response import Response

from apps.core import generation


class EnableDisableMixin:
    """Declare ``action_permissions`` ``{"enable": "update", "disable": "update"}`` on the viewset."""

    def _set_enabled(self, enabled: bool) -> Response:
        obj = self.get_object()
        type(obj).objects.filter(pk=obj.pk).update(enabled=enabled, updated=timezone.now())
        generation.changed()  # an update() sends no save signal: per-process caches must still see it at once
        obj.refresh_from_db()
        return Response(self.get_serializer(obj).data)

    @extend_schema(request=None)
    @route(detail=True, methods=["post"])
    def enable(self, request, **kwargs):
        return self._set_enabled(True)

    @extend_schema(request=None)
    @route(detail=True, methods=["post"])
    def disable(self, request, **kwargs):
        return self._set_enabled(False)
