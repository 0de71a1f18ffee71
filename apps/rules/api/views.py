from __future__ import annotations

import django_filters
from drf_spectacular.utils import extend_schema
from rest_framework.decorators import action as route
from rest_framework.response import Response

from apps.core.api.enable import EnableDisableMixin
from apps.core.api.views import ModelViewSet, ReadOnlyViewSet, RefLookupMixin
from apps.rules.models import Enforcement, Rule

from .serializers import EnforcementSerializer, RuleSerializer, RuleTestResultSerializer, RuleTestSerializer


class RuleFilter(django_filters.FilterSet):
    pack = django_filters.CharFilter(field_name="pack__ref")
    trigger = django_filters.CharFilter(field_name="trigger__ref")
    action = django_filters.CharFilter(field_name="action__ref")

    class Meta:
        model = Rule
        fields = ["pack", "trigger", "action", "enabled", "source"]


class RuleViewSet(EnableDisableMixin, RefLookupMixin, ModelViewSet):
    resource = "rules"
    queryset = Rule.objects.select_related("pack", "trigger", "action", "owner")
    serializer_class = RuleSerializer
    filterset_class = RuleFilter
    search_fields = ["ref", "description"]
    ordering_fields = ["ref", "created", "updated"]
    action_permissions = {"enable": "update", "disable": "update", "test": "view"}

    def perform_create(self, serializer):
        serializer.save(owner=self.request.user)

    @extend_schema(request=RuleTestSerializer, responses={200: RuleTestResultSerializer})
    @route(detail=False, methods=["post"])
    def test(self, request):
        """Would this rule match this payload, and with which parameters? Runs nothing."""
        from apps.rules.testing import test_rule

        body = RuleTestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        return Response(test_rule(request, body.validated_data["rule"], body.validated_data["payload"]))


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
