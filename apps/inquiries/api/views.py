from __future__ import annotations

import json

import django_filters
from django.db.models import Q, TextField
from django.db.models.functions import Cast
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.decorators import action as route
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.response import Response

from apps.core.api.errors import Conflict
from apps.core.api.views import ReadOnlyViewSet
from apps.inquiries import services
from apps.inquiries.models import Inquiry

from .serializers import InquiryResponseSerializer, InquirySerializer


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


DETAIL = inline_serializer("InquiryRespondError", {"detail": serializers.CharField()})


class InquiryViewSet(ReadOnlyViewSet):
    resource = "inquiries"
    pack_lookup = "execution__pack_ref"
    queryset = Inquiry.objects.select_related("execution", "responded_by")
    serializer_class = InquirySerializer
    filterset_class = InquiryFilter
    ordering_fields = ["id", "created", "timeout_at"]
    action_permissions = {"respond": "respond"}

    @extend_schema(
        request=InquiryResponseSerializer,
        responses={
            200: InquirySerializer,
            400: OpenApiResponse(description='`{"response": ["<field>: <message>", ...]}`: the answer does not '
                                             "match the inquiry's schema."),
            403: OpenApiResponse(DETAIL, description="No inquiries:respond grant for the pack, not an assignee or "
                                                     "role member, or the execution answering itself."),
            404: DETAIL,
            409: OpenApiResponse(DETAIL, description="Already answered, timed out or cancelled."),
        },
    )
    @route(detail=True, methods=["post"])
    def respond(self, request, pk=None):
        """Answer the inquiry: ``{"response": {...}}``. The paused execution succeeds with
        ``{response, responded_by, inquiry}`` and its workflow continues. Only once."""
        from apps.accounts.audit import record

        inquiry = self.get_object()
        body = InquiryResponseSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            inquiry = services.respond(inquiry, request.user, body.validated_data["response"], auth=request.auth)
        except services.NotAllowed as exc:
            raise PermissionDenied(exc.message) from None
        except services.NotPending as exc:
            raise Conflict(exc.message) from None
        except services.InvalidResponse as exc:
            raise ValidationError({"response": exc.errors}) from None
        response = inquiry.response
        record(request.user, "inquiry.respond", obj=inquiry, request=request, execution=inquiry.execution_id,
               fields=sorted(response) if isinstance(response, dict) else None)
        return Response(InquirySerializer(inquiry).data)
