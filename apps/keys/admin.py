"""Admin for datastore keys.

Secrets are never shown: not the ciphertext (``encrypted_value``), not the plaintext. A secret key's scope,
owner and name are bound into its ciphertext as associated data, so they are read-only too; secrets are
created and rotated through the API or CLI, which encrypt them.
"""
from __future__ import annotations

import json

from django.contrib import admin
from django.utils import timezone

from apps.core.admin_utils import IdSearchMixin, short

from .models import Key
from .services import REDACTED


class ExpiredFilter(admin.SimpleListFilter):
    title = "expired"
    parameter_name = "expired"

    def lookups(self, request, model_admin):
        return (("yes", "yes"), ("no", "no"))

    def queryset(self, request, queryset):
        now = timezone.now()
        if self.value() == "yes":
            return queryset.filter(expires_at__lte=now)
        if self.value() == "no":
            return queryset.exclude(expires_at__lte=now)
        return queryset


@admin.register(Key)
class KeyAdmin(IdSearchMixin, admin.ModelAdmin):
    list_display = ("name", "scope", "owner", "value_preview", "secret", "expires_at", "is_expired", "updated")
    list_filter = ("scope", "secret", ExpiredFilter)
    search_fields = ("name", "owner")
    exclude = ("encrypted_value",)
    list_per_page = 100

    def get_fields(self, request, obj=None):
        if obj is None:
            return ("name", "scope", "owner", "value", "expires_at")
        if obj.secret:
            return (
                "name", "scope", "owner", "secret", "value_display", "key_version", "expires_at", "created_by",
                "created", "updated",
            )
        return ("name", "scope", "owner", "secret", "value", "expires_at", "created_by", "created", "updated")

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return ()
        readonly = ["secret", "created_by", "created", "updated"]
        if obj.secret:
            readonly += ["name", "scope", "owner", "value_display", "key_version"]
        return readonly

    def get_form(self, request, obj=None, **kwargs):
        form = super().get_form(request, obj, **kwargs)
        if obj is None and "value" in form.base_fields:
            form.base_fields["value"].help_text = (
                "Plain JSON value. Secret keys are created through the API or CLI, which encrypt them."
            )
        return form

    def save_model(self, request, obj, form, change):
        if not change:
            obj.secret = False
            obj.encrypted_value = ""
            obj.key_version = None
            obj.created_by = request.user
        super().save_model(request, obj, form, change)

    @admin.display(description="value")
    def value_preview(self, obj):
        if obj.secret:
            return REDACTED
        return short(json.dumps(obj.value, default=str, ensure_ascii=False), 80)

    @admin.display(description="value")
    def value_display(self, obj):
        return REDACTED if obj.secret else json.dumps(obj.value, default=str, ensure_ascii=False)

    @admin.display(description="expired", boolean=True)
    def is_expired(self, obj):
        return obj.expired
