from __future__ import annotations

from rest_framework import serializers

from apps.inquiries.models import Inquiry


class InquirySerializer(serializers.ModelSerializer):
    responded_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = Inquiry
        fields = ["id", "execution", "prompt", "schema", "assignees", "roles", "status", "response", "responded_by",
                  "responded_at", "timeout_at", "created"]
        read_only_fields = fields


class InquiryResponseSerializer(serializers.Serializer):
    response = serializers.JSONField(help_text="The answer; validated against the inquiry's schema.")
