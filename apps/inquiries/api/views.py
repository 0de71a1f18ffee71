from __future__ import annotations

import json

import django_filters
from django.db.models import Q, TextField
from django.db.models.functions import Cast

from apps.core.api.views import ReadOnlyViewSet
from apps.inquiries.models import Inquiry

from .serializers import InquirySerializer


class InquiryFilter(django_filters.FilterSet):
    assigned_to_me = django_filters.BooleanFilter(method="filter_assigned_to_me")

    class Meta:
        model = Inquiry
        fields = ["status", "execution", "assigned_to_me"]

    def filter_assigned_to_me(self, queryset, name, value):
        if value is None:
            return queryset
        user = self.request.user
        roles = list(user.assignments.values_list("permission_set__name", flat=True))
        # JSON list membership, portable across SQLite and PostgreSQL: match the quoted element.
        queryset = queryset.annotate(_assignees=Cast("assignees", TextField()), _roles=Cast("roles", TextField()))
        mine = Q(_assignees__contains=json.dumps(user.username))
        for role in roles:
            mine |= Q(_roles__contains=json.dumps(role))
        return queryset.filter(mine) if value else queryset.exclude(mine)


class InquiryViewSet(ReadOnlyViewSet):
    resource = "inquiries"
    pack_lookup = "execution__pack_ref"
    queryset = Inquiry.objects.select_related("execution", "responded_by")
    serializer_class = InquirySerializer
    filterset_class = InquiryFilter
    ordering_fields = ["id", "created", "timeout_at"]
