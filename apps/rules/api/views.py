from __future__ import annotations

import django_filters

from apps.core.api.views import ModelViewSet, ReadOnlyViewSet, RefLookupMixin
from apps.rules.models import Enforcement, Rule

from .serializers import EnforcementSerializer, RuleSerializer


class RuleFilter(django_filters.FilterSet):
    pack = django_filters.CharFilter(field_name="pack__ref")
    trigger = django_filters.CharFilter(field_name="trigger__ref")
    action = django_filters.CharFilter(field_name="action__ref")

    class Meta:
        model = Rule
        fields = ["pack", "trigger", "action", "enabled", "source"]


class RuleViewSet(RefLookupMixin, ModelViewSet):
    resource = "rules"
    queryset = Rule.objects.select_related("pack", "trigger", "action", "owner")
    serializer_class = RuleSerializer
    filterset_class = RuleFilter
    search_fields = ["ref", "description"]
    ordering_fields = ["ref", "created", "updated"]

    def perform_create(self, serializer):
        serializer.save(owner=self.request.user)


class EnforcementFilter(django_filters.FilterSet):
    rule = django_filters.CharFilter(field_name="rule_ref")
    created_after = django_filters.IsoDateTimeFilter(field_name="created", lookup_expr="gte")
    created_before = django_filters.IsoDateTimeFilter(field_name="created", lookup_expr="lt")

    class Meta:
        model = Enforcement
        fields = ["rule", "event", "status", "execution", "created_after", "created_before"]


class EnforcementViewSet(ReadOnlyViewSet):
    resource = "enforcements"
    pack_lookup = "rule__pack__ref"
    queryset = Enforcement.objects.all()
    serializer_class = EnforcementSerializer
    filterset_class = EnforcementFilter
    ordering_fields = ["id", "created"]
