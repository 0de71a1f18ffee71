from __future__ import annotations

import django_filters
from django.db.models import Prefetch

from apps.core.api.views import ModelViewSet, ReadOnlyViewSet, RefLookupMixin
from apps.executions.models import Artifact, Execution, Policy, Worker
from apps.executions.selectors import with_queue_position

from .serializers import (
    ArtifactSerializer,
    ExecutionSerializer,
    PolicySerializer,
    WorkerSerializer,
)


class CharInFilter(django_filters.BaseInFilter, django_filters.CharFilter):
    """``?status=running,failed``"""


class ExecutionFilter(django_filters.FilterSet):
    status = CharInFilter(field_name="status")
    action = django_filters.CharFilter(field_name="action_ref")
    pack = django_filters.CharFilter(field_name="pack_ref")
    rule = django_filters.CharFilter(field_name="rule__ref")
    created_after = django_filters.IsoDateTimeFilter(field_name="created", lookup_expr="gte")
    created_before = django_filters.IsoDateTimeFilter(field_name="created", lookup_expr="lt")
    started_by = django_filters.CharFilter(field_name="started_by__username")
    parent = django_filters.NumberFilter(field_name="parent_id")
    root = django_filters.BooleanFilter(field_name="parent", lookup_expr="isnull", label="Top-level only")

    class Meta:
        model = Execution
        fields = ["status", "action", "pack", "rule", "enforcement", "parent", "trigger_event", "worker",
                  "created_after", "created_before", "started_by", "root"]


class ExecutionViewSet(ReadOnlyViewSet):
    resource = "executions"
    pack_lookup = "pack_ref"
    queryset = Execution.objects.select_related("started_by", "worker", "rule").prefetch_related(
        Prefetch("children", queryset=Execution.objects.only("id", "parent_id").order_by("id"))
    )
    serializer_class = ExecutionSerializer
    filterset_class = ExecutionFilter

    def get_queryset(self):
        return with_queue_position(super().get_queryset())
    ordering_fields = ["id", "created", "started_at", "finished_at", "status"]


class WorkerViewSet(ReadOnlyViewSet):
    resource = "workers"
    pack_lookup = "*"
    queryset = Worker.objects.all()
    serializer_class = WorkerSerializer
    filterset_fields = ["state", "hostname", "mode"]
    ordering_fields = ["last_heartbeat", "started_at", "name"]


class ArtifactViewSet(ReadOnlyViewSet):
    resource = "artifacts"
    pack_lookup = "execution__pack_ref"
    queryset = Artifact.objects.select_related("execution")
    serializer_class = ArtifactSerializer
    filterset_fields = ["execution", "name", "content_type"]
    ordering_fields = ["created", "name"]


class PolicyFilter(django_filters.FilterSet):
    pack = django_filters.CharFilter(field_name="pack__ref")
    action = django_filters.CharFilter(field_name="action__ref")

    class Meta:
        model = Policy
        fields = ["pack", "action", "type", "enabled"]


class PolicyViewSet(RefLookupMixin, ModelViewSet):
    resource = "policies"
    queryset = Policy.objects.select_related("pack", "action")
    serializer_class = PolicySerializer
    filterset_class = PolicyFilter
    ordering_fields = ["ref", "created"]
