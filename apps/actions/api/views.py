from __future__ import annotations

import django_filters

from apps.actions.models import Action
from apps.core.api.views import ModelViewSet, RefLookupMixin

from .serializers import ActionSerializer


class ActionFilter(django_filters.FilterSet):
    pack = django_filters.CharFilter(field_name="pack__ref")
    runner_type = django_filters.CharFilter(field_name="runner_type__name")

    class Meta:
        model = Action
        fields = ["pack", "runner_type", "enabled", "source"]


class ActionViewSet(RefLookupMixin, ModelViewSet):
    resource = "actions"
    queryset = Action.objects.select_related("pack", "runner_type")
    serializer_class = ActionSerializer
    filterset_class = ActionFilter
    search_fields = ["ref", "description"]
    ordering_fields = ["ref", "created", "updated"]
