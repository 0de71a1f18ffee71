from __future__ import annotations

import django_filters
from django.db import transaction
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action as route
from rest_framework.exceptions import NotFound
from rest_framework.response import Response

from apps.core.api.enable import EnableDisableMixin
from apps.core.api.errors import Conflict
from apps.core.api.views import ModelViewSet, ReadOnlyViewSet, RefLookupMixin
from apps.triggers import services as events_service
from apps.triggers import webhooks
from apps.triggers.models import Event, Sensor, Trigger

from .serializers import EventSerializer, SensorSerializer, SensorStatusSerializer, TriggerSerializer


class TriggerFilter(django_filters.FilterSet):
    pack = django_filters.CharFilter(field_name="pack__ref")

    class Meta:
        model = Trigger
        fields = ["pack", "enabled", "system", "source"]


class WebhookOptionsSerializer(serializers.Serializer):
    hmac_secret = serializers.CharField(required=False, allow_blank=True, write_only=True,
                                        help_text="Verify X-Hub-Signature-256 (GitHub style). Empty removes it.")
    allowed_cidrs = serializers.ListField(child=serializers.CharField(), required=False)
    max_payload_bytes = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    rate_limit_per_minute = serializers.IntegerField(required=False, allow_null=True, min_value=1)

    def validate(self, attrs):
        errors = webhooks.validate_options(attrs)
        if errors:
            raise serializers.ValidationError(errors)
        return attrs


class WebhookIssuedSerializer(serializers.Serializer):
    key = serializers.CharField(allow_null=True, help_text="Shown once. Null when the webhook already existed.")
    url = serializers.CharField(allow_null=True)
    trigger = serializers.CharField()
    has_hmac_secret = serializers.BooleanField()
    allowed_cidrs = serializers.ListField(child=serializers.CharField())
    max_payload_bytes = serializers.IntegerField(allow_null=True)
    rate_limit_per_minute = serializers.IntegerField(allow_null=True)


def _webhook_body(webhook, issued) -> dict:
    return {"key": issued.key if issued else None, "url": issued.url if issued else None,
            "trigger": webhook.trigger.ref, "has_hmac_secret": bool(webhook.hmac_secret_encrypted),
            "allowed_cidrs": webhook.allowed_cidrs, "max_payload_bytes": webhook.max_payload_bytes,
            "rate_limit_per_minute": webhook.rate_limit_per_minute}


class TriggerViewSet(EnableDisableMixin, RefLookupMixin, ModelViewSet):
    resource = "triggers"
    queryset = Trigger.objects.select_related("pack", "webhook")
    serializer_class = TriggerSerializer
    filterset_class = TriggerFilter
    action_permissions = {"enable": "update", "disable": "update", "webhook_enable": "update",
                          "webhook_regenerate": "update", "webhook_disable": "update"}

    @extend_schema(request=WebhookOptionsSerializer, responses={200: WebhookIssuedSerializer,
                                                               201: WebhookIssuedSerializer})
    @route(detail=True, methods=["post"], url_path="webhook/enable")
    def webhook_enable(self, request, ref=None):
        """Create the trigger's webhook (201 with ``{key, url}``, the key shown once) or update its options."""
        body = WebhookOptionsSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        webhook, issued = webhooks.enable(self.get_object(), body.validated_data)
        return Response(_webhook_body(webhook, issued), status=status.HTTP_201_CREATED if issued else 200)

    @extend_schema(request=None, responses={200: WebhookIssuedSerializer})
    @route(detail=True, methods=["post"], url_path="webhook/regenerate")
    def webhook_regenerate(self, request, ref=None):
        """A new key; the old URL stops working at once."""
        webhook = self._webhook()
        return Response(_webhook_body(webhook, webhooks.regenerate(webhook)))

    @extend_schema(request=None, responses={204: None})
    @route(detail=True, methods=["post"], url_path="webhook/disable")
    def webhook_disable(self, request, ref=None):
        webhooks.disable(self._webhook())
        return Response(status=status.HTTP_204_NO_CONTENT)

    def _webhook(self):
        trigger = self.get_object()
        webhook = getattr(trigger, "webhook", None) if hasattr(trigger, "webhook") else None
        if webhook is None:
            raise NotFound(f"trigger {trigger.ref} has no webhook; enable it first.")
        return webhook
    search_fields = ["ref", "description"]
    ordering_fields = ["ref", "created"]


class SensorFilter(django_filters.FilterSet):
    pack = django_filters.CharFilter(field_name="pack__ref")
    trigger = django_filters.CharFilter(field_name="trigger_types__ref")

    class Meta:
        model = Sensor
        fields = ["pack", "enabled", "mode", "state", "trigger"]


class SensorViewSet(EnableDisableMixin, RefLookupMixin, ModelViewSet):
    resource = "sensors"
    queryset = Sensor.objects.select_related("pack", "runner_type").prefetch_related("trigger_types")
    serializer_class = SensorSerializer
    filterset_class = SensorFilter
    action_permissions = {"enable": "update", "disable": "update", "status": "view"}

    @extend_schema(responses={200: SensorStatusSerializer})
    @route(detail=True, methods=["get"], url_path="status")
    def status(self, request, ref=None):
        """Supervisor state: running or not, pid, restarts, next start, last stderr lines."""
        return Response(SensorStatusSerializer(self.get_object()).data)
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


class EventEmitSerializer(serializers.Serializer):
    trigger = serializers.CharField(help_text="Trigger ref, e.g. mypack.new_ticket")
    payload = serializers.JSONField(required=False, default=dict)


class EventViewSet(mixins.CreateModelMixin, ReadOnlyViewSet):
    resource = "events"
    pack_lookup = "trigger__pack__ref"
    queryset = Event.objects.all()
    serializer_class = EventSerializer
    filterset_class = EventFilter
    action_permissions = {"create": "create", "re_emit": "create"}

    @extend_schema(request=EventEmitSerializer, responses={201: EventSerializer})
    def create(self, request, *args, **kwargs):
        """Emit an event (service accounts, external systems): ``{trigger, payload}`` → 201."""
        from apps.accounts.permissions import has_grant

        body = EventEmitSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        ref = body.validated_data["trigger"]
        trigger = Trigger.objects.select_related("pack").filter(ref=ref).first()
        if trigger is None or not has_grant(request.user, "triggers", "view", trigger.pack.ref):
            raise serializers.ValidationError({"trigger": [f"no trigger {ref!r}."]})
        if not has_grant(request.user, "events", "create", trigger.pack.ref):
            self.permission_denied(request, "you may not emit events of this pack.")
        try:
            with transaction.atomic():
                event = events_service.emit(trigger, body.validated_data["payload"], user=request.user,
                                            meta={"source": "api", "user": request.user.username})
        except events_service.TriggerDisabled as exc:
            raise Conflict(str(exc)) from None
        return Response(EventSerializer(event).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={201: EventSerializer})
    @route(detail=True, methods=["post"], url_path="re-emit")
    def re_emit(self, request, pk=None):
        """Emit the same trigger and payload again (matched again by the rules enabled now)."""
        try:
            with transaction.atomic():
                event = events_service.re_emit(self.get_object(), user=request.user)
        except events_service.TriggerDisabled as exc:
            raise Conflict(str(exc)) from None
        return Response(EventSerializer(event).data, status=status.HTTP_201_CREATED)
    ordering_fields = ["id", "created"]
