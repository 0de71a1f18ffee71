from __future__ import annotations

import django_filters

from apps.core.api.views import ModelViewSet, ReadOnlyViewSet, RefLookupMixin
from apps.triggers.models import Event, Sensor, Trigger

from .serializers import EventSerializer, SensorSerializer, TriggerSerializer


class TriggerFilter(django_filters.FilterSet):
    pack = django_filters.CharFilter(field_name="pack__ref")

    class Meta:
        model = Trigger
        fields = ["pack", "enabled", "system", "source"]


class TriggerViewSet(RefLookupMixin, ModelViewSet):
    resource = "triggers"
    queryset = Trigger.objects.select_related("pack", "webhook")
    serializer_class = TriggerSerializer
    filterset_class = TriggerFilter
    search_fields = ["ref", "description"]
    ordering_fields = ["ref", "created"]


class SensorFilter(django_filters.FilterSet):
    pack = django_filters.CharFilter(field_name="pack__ref")
    trigger = django_filters.CharFilter(field_name="trigger_types__ref")

    class Meta:
        model = Sensor
        fields = ["pack", "enabled", "mode", "state", "trigger"]


class SensorViewSet(RefLookupMixin, ModelViewSet):
    resource = "sensors"
    queryset = Sensor.objects.select_related("pack", "runner_type").prefetch_related("trigger_types")
    serializer_class = SensorSerializer
    filterset_class = SensorFilter
    search_fields = ["ref", "description"]
    ordering_fields = ["ref", "created"]


class EventFilter(django_filters.FilterSet):
    trigger = django_filters.CharFilter(field_name="trigger_ref")
    pack = django_filters.CharFilter(field_name="trigger__pack__ref")
    created_after = django_filters.IsoDateTimeFilter(field_name="created", lookup_expr="gte")
    created_before = django_filters.IsoDateTimeFilter(field_name="created", lookup_expr="lt")

    class Meta:
        model = Event
        fields = ["trigger", "pack", "status", "created_after", "created_before"]


class EventViewSet(ReadOnlyViewSet):
    resource = "events"
    pack_lookup = "trigger__pack__ref"
    queryset = Event.objects.all()
    serializer_class = EventSerializer
    filterset_class = EventFilter
    ordering_fields = ["id", "created"]
