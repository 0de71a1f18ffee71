"""Admin for identities, permission sets, assignments and API tokens."""
from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.utils import timezone

from apps.core.admin_utils import (
    EMPTY,
    FieldsetsReadOnlyMixin,
    IdSearchMixin,
    ReadOnlyAdminMixin,
    ReadOnlyTabularInline,
    admin_link,
    changelist_link,
    json_block,
    short,
)

from .audit import assignment_facts, object_ref_of, record
from .models import ApiToken, AuditEvent, PermissionAssignment, PermissionSet, User


class AuditedAdminMixin:
    """Record ``<audit_type>.create|update|delete`` for changes made in the admin (as the API does)."""

    audit_type = ""

    def audit_facts(self, obj) -> dict:
        return {}

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        fields = sorted(form.changed_data) if change else None
        record(request.user, f"{self.audit_type}.{'update' if change else 'create'}", obj=obj, request=request,
               object_type=self.audit_type, via="admin", **({"fields": fields} if change else {}),
               **self.audit_facts(obj))

    def delete_model(self, request, obj):
        facts, ref = self.audit_facts(obj), object_ref_of(obj)
        super().delete_model(request, obj)
        record(request.user, f"{self.audit_type}.delete", request=request, object_type=self.audit_type,
               object_ref=ref, via="admin", **facts)

    def delete_queryset(self, request, queryset):
        gone = [(object_ref_of(obj), self.audit_facts(obj)) for obj in queryset]
        super().delete_queryset(request, queryset)
        for ref, facts in gone:
            record(request.user, f"{self.audit_type}.delete", request=request, object_type=self.audit_type,
                   object_ref=ref, via="admin", **facts)


class PermissionAssignmentInline(admin.TabularInline):
    model = PermissionAssignment
    fk_name = "identity"
    extra = 0
    fields = ("permission_set", "packs", "created")
    readonly_fields = ("created",)
    autocomplete_fields = ("permission_set",)


class ApiTokenInline(ReadOnlyTabularInline):
    """Tokens are issued through the API (which shows the raw value once); listed here for review."""

    model = ApiToken
    fk_name = "user"
    fields = ("name", "prefix", "created", "expires_at", "last_used_at", "revoked_at")
    readonly_fields = fields
    ordering = ("-created",)


@admin.register(User)
class UserAdmin(AuditedAdminMixin, DjangoUserAdmin):
    audit_type = "identity"
    list_display = (
        "username", "email", "first_name", "last_name", "is_service_account", "is_staff", "is_superuser",
        "is_active", "last_login", "date_joined",
    )
    list_filter = ("is_service_account", "is_staff", "is_superuser", "is_active", "groups")
    search_fields = ("username", "first_name", "last_name", "email")
    readonly_fields = ("last_login", "date_joined", "updated")
    fieldsets = (
        (None, {"fields": ("username", "password", "is_service_account")}),
        ("Personal info", {"fields": ("first_name", "last_name", "email")}),
        (
            "Permissions",
            {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions"),
             "classes": ("collapse",)},
        ),
        ("Important dates", {"fields": ("last_login", "date_joined", "updated")}),
    )
    add_fieldsets = (
        (
            None,
            {
                "classes": ("wide",),
                "fields": ("username", "email", "is_service_account", "usable_password", "password1", "password2"),
            },
        ),
    )
    inlines = (PermissionAssignmentInline, ApiTokenInline)

    def audit_facts(self, obj) -> dict:
        return {"is_service_account": obj.is_service_account, "is_active": obj.is_active, "is_staff": obj.is_staff,
                "is_superuser": obj.is_superuser}

    def save_formset(self, request, form, formset, change):
        if formset.model is not PermissionAssignment:
            return super().save_formset(request, form, formset, change)
        deleted = [(str(f.instance.pk), assignment_facts(f.instance))
                   for f in formset.deleted_forms if f.instance.pk is not None]
        super().save_formset(request, form, formset, change)
        for obj in formset.new_objects:
            record(request.user, "permission_assignment.create", obj=obj, request=request,
                   object_type="permission_assignment", via="admin", **assignment_facts(obj))
        for obj, fields in formset.changed_objects:
            record(request.user, "permission_assignment.update", obj=obj, request=request,
                   object_type="permission_assignment", via="admin", fields=sorted(fields), **assignment_facts(obj))
        for ref, facts in deleted:
            record(request.user, "permission_assignment.delete", request=request, object_type="permission_assignment",
                   object_ref=ref, via="admin", **facts)


@admin.register(PermissionSet)
class PermissionSetAdmin(AuditedAdminMixin, admin.ModelAdmin):
    audit_type = "permission_set"
    list_display = ("name", "description_short", "grant_count", "builtin", "assignments_link", "updated")
    list_filter = ("builtin",)
    search_fields = ("name", "description")
    readonly_fields = ("builtin", "grants_pretty", "created", "updated")
    fields = ("name", "description", "grants", "grants_pretty", "builtin", "created", "updated")

    def get_readonly_fields(self, request, obj=None):
        readonly = super().get_readonly_fields(request, obj)
        # Built-in sets are looked up by name (viewer, operator, editor, admin...): keep the name.
        return ("name", *readonly) if obj is not None and obj.builtin else readonly

    def has_delete_permission(self, request, obj=None):
        if obj is not None and obj.builtin:
            return False
        return super().has_delete_permission(request, obj)

    def audit_facts(self, obj) -> dict:
        return {"grants": obj.grants}

    @admin.display(description="description")
    def description_short(self, obj):
        return (obj.description or "")[:80]

    @admin.display(description="grants")
    def grant_count(self, obj):
        return len(obj.grants or [])

    @admin.display(description="assignments")
    def assignments_link(self, obj):
        return changelist_link(PermissionAssignment, "assignments", permission_set__id__exact=obj.pk)

    @admin.display(description="grants (formatted)")
    def grants_pretty(self, obj):
        return json_block(obj.grants)


@admin.register(PermissionAssignment)
class PermissionAssignmentAdmin(AuditedAdminMixin, admin.ModelAdmin):
    audit_type = "permission_assignment"
    list_display = ("id", "identity_link", "permission_set_link", "packs", "created")
    list_filter = ("permission_set",)
    list_select_related = ("identity", "permission_set")
    search_fields = ("identity__username", "permission_set__name")
    autocomplete_fields = ("identity", "permission_set")
    readonly_fields = ("created", "updated")

    def audit_facts(self, obj) -> dict:
        return assignment_facts(obj)

    @admin.display(description="identity", ordering="identity__username")
    def identity_link(self, obj):
        return admin_link(User, obj.identity_id, obj.identity.username)

    @admin.display(description="permission set", ordering="permission_set__name")
    def permission_set_link(self, obj):
        return admin_link(PermissionSet, obj.permission_set_id, obj.permission_set.name)


class TokenStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return (("active", "active"), ("revoked", "revoked"), ("expired", "expired"))

    def queryset(self, request, queryset):
        now = timezone.now()
        if self.value() == "active":
            return queryset.filter(revoked_at__isnull=True).exclude(expires_at__lte=now)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        if self.value() == "expired":
            return queryset.filter(revoked_at__isnull=True, expires_at__lte=now)
        return queryset


@admin.register(ApiToken)
class ApiTokenAdmin(IdSearchMixin, admin.ModelAdmin):
    """Tokens are issued through the API, which shows the raw value once. ``key_hash`` is never shown."""

    list_display = (
        "name", "prefix", "user_link", "active", "created", "expires_at", "last_used_at", "revoked_at",
    )
    list_filter = (TokenStateFilter, "user__is_service_account")
    list_select_related = ("user",)
    search_fields = ("name", "prefix", "user__username")
    date_hierarchy = "created"
    fields = ("user", "name", "prefix", "created", "expires_at", "last_used_at", "revoked_at")
    readonly_fields = ("user", "prefix", "created", "last_used_at")
    actions = ("revoke",)

    def has_add_permission(self, request):
        return False

    @admin.display(description="user", ordering="user__username")
    def user_link(self, obj):
        return admin_link(User, obj.user_id, obj.user.username)

    @admin.display(description="active", boolean=True)
    def active(self, obj):
        return obj.is_active

    @admin.action(description="Revoke selected tokens", permissions=("change",))
    def revoke(self, request, queryset):
        now = timezone.now()
        active = list(queryset.filter(revoked_at__isnull=True).select_related("user"))
        count = queryset.filter(pk__in=[t.pk for t in active]).update(revoked_at=now, updated=now)
        for token in active:
            record(request.user, "api_token.revoke", obj=token, request=request, object_ref=str(token.pk),
                   owner=token.user.username, name=token.name, prefix=token.prefix, via="admin")
        self.message_user(request, f"Revoked {count} token(s).", messages.SUCCESS)


@admin.register(AuditEvent)
class AuditEventAdmin(FieldsetsReadOnlyMixin, IdSearchMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    """The audit log: written by the system, read here, never changed or deleted (not even by superusers)."""

    list_display = ("created", "actor_display", "action", "object_type", "object_ref_short", "pack_ref", "remote_addr")
    list_display_links = ("created", "action")
    list_filter = ("action", "object_type")
    search_fields = ("actor_name", "action", "object_ref", "pack_ref")
    date_hierarchy = "created"
    list_select_related = ("actor",)
    fieldsets = (
        (None, {"fields": ("id", "created", "actor_display", "action", "remote_addr")}),
        ("Object", {"fields": ("object_type", "object_ref", "pack_ref")}),
        ("Details", {"fields": ("details_pretty",)}),
    )

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="actor", ordering="actor_name")
    def actor_display(self, obj):
        if obj.actor_id is None:
            return obj.actor_name or EMPTY
        return admin_link(User, obj.actor_id, obj.actor_name)

    @admin.display(description="object", ordering="object_ref")
    def object_ref_short(self, obj):
        return short(obj.object_ref, 60) or EMPTY

    @admin.display(description="details")
    def details_pretty(self, obj):
        return json_block(obj.details)
