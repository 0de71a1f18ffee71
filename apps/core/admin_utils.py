"""Helpers shared by every app's ``admin.py``.

Links are built from ``"<app_label>.<ModelName>"`` strings and primary keys, so an admin never needs to
import a higher layer's models (or even load the related row) to link to it.
"""
from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin
from django.db.models import Q
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode
from django.utils.text import Truncator

from .refs import make_ref

EMPTY = "-"
MAX_BIGINT = 2**63 - 1


def _url_name(model: Any, view: str) -> str:
    if isinstance(model, str):
        app_label, _, model_name = model.partition(".")
        model_name = model_name.lower()
    else:
        app_label, model_name = model._meta.app_label, model._meta.model_name
    return f"admin:{app_label}_{model_name}_{view}"


def admin_change_url(model: Any, pk: Any) -> str | None:
    """URL of a row's admin change page; ``model`` is a model, an instance or ``"app_label.Model"``."""
    if pk is None:
        return None
    try:
        return reverse(_url_name(model, "change"), args=[pk])
    except NoReverseMatch:
        return None


def admin_changelist_url(model: Any, **filters: Any) -> str | None:
    """URL of a model's admin changelist, optionally filtered (``parent__id__exact=3``)."""
    try:
        url = reverse(_url_name(model, "changelist"))
    except NoReverseMatch:
        return None
    return f"{url}?{urlencode(filters)}" if filters else url


def admin_link(model: Any, pk: Any, label: Any = None) -> str:
    """``<a>`` to a row's change page; plain text when the model has no admin; "-" when ``pk`` is None."""
    if pk is None:
        return EMPTY
    label = f"#{pk}" if label in (None, "") else label
    url = admin_change_url(model, pk)
    if url is None:
        return format_html("{}", label)
    return format_html('<a href="{}">{}</a>', url, label)


def obj_link(obj: Any, label: Any = None) -> str:
    """``<a>`` to an instance's change page, labelled with ``str(obj)`` by default."""
    if obj is None:
        return EMPTY
    return admin_link(obj, obj.pk, str(obj) if label is None else label)


def changelist_link(model: Any, label: Any, **filters: Any) -> str:
    url = admin_changelist_url(model, **filters)
    if url is None:
        return format_html("{}", label)
    return format_html('<a href="{}">{}</a>', url, label)


def links_list(model: Any, rows: list[tuple[Any, Any]]) -> str:
    """Comma-separated links from ``(pk, label)`` pairs."""
    if not rows:
        return EMPTY
    return format_html_join(", ", "{}", ((admin_link(model, pk, label),) for pk, label in rows))


def json_block(value: Any) -> str:
    """Pretty-printed JSON in a ``<pre>`` (values are escaped)."""
    if value is None:
        return EMPTY
    text = json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False)
    return format_html('<pre style="white-space: pre-wrap; margin: 0">{}</pre>', text)


def text_block(value: str | None) -> str:
    if not value:
        return EMPTY
    return format_html('<pre style="white-space: pre-wrap; margin: 0">{}</pre>', value)


def short(value: Any, length: int = 80) -> str:
    if value in (None, ""):
        return EMPTY
    return Truncator(str(value)).chars(length)


def format_duration_ms(ms: int | None) -> str:
    if ms is None:
        return EMPTY
    if ms < 1000:
        return f"{ms} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s"


_STATUS_COLOURS = {
    # execution / task / inquiry / enforcement / worker / sensor states
    "succeeded": "#2e7d32", "responded": "#2e7d32", "matched": "#2e7d32", "online": "#2e7d32",
    "processed": "#2e7d32",
    "failed": "#c62828", "timeout": "#c62828", "abandoned": "#c62828", "invalid": "#c62828", "dead": "#c62828",
    "backoff": "#c62828",
    "canceled": "#757575", "canceling": "#757575", "skipped": "#757575", "not_matched": "#757575",
    "offline": "#757575", "stopped": "#757575", "disabled": "#757575",
    "running": "#1565c0", "pending": "#ef6c00", "delayed": "#ef6c00", "paused": "#ef6c00", "pausing": "#ef6c00",
}


def status_html(status: str | None) -> str:
    if not status:
        return EMPTY
    colour = _STATUS_COLOURS.get(str(status), "inherit")
    return format_html('<span style="color: {}; font-weight: bold">{}</span>', colour, status)


class IdSearchMixin:
    """Searching for a number (``42`` or ``#42``) also matches these integer fields exactly.

    Django's ``=id`` search casts the column to text (no index) and ``id__iexact`` crashes on non-digits;
    this keeps id look-ups on the primary-key / foreign-key indexes.
    """

    search_id_fields: tuple[str, ...] = ("id",)

    def get_search_results(self, request, queryset, search_term):
        results, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        term = (search_term or "").strip().lstrip("#")
        if term.isdigit() and self.search_id_fields and int(term) <= MAX_BIGINT:
            by_id = Q()
            for field in self.search_id_fields:
                by_id |= Q(**{field: int(term)})
            if self.get_search_fields(request):
                results = results | queryset.filter(by_id)
            else:
                results = queryset.filter(by_id)
        return results, may_have_duplicates


class ReadOnlyAdminMixin:
    """System-written records: viewable, never added or changed here; superusers may delete."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return bool(request.user.is_active and request.user.is_superuser)


class FieldsetsReadOnlyMixin:
    """Every field named in ``fieldsets`` is read-only (the detail page is a report, not a form)."""

    def get_readonly_fields(self, request, obj=None):
        return [name for _, options in self.fieldsets for name in options["fields"]]


class ReadOnlyTabularInline(admin.TabularInline):
    extra = 0
    max_num = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


def values_list_filter(title: str, parameter_name: str, field: str, values_qs) -> type[admin.SimpleListFilter]:
    """A list filter on a plain string column whose choices come from a small table.

    ``values_qs`` is a callable returning an iterable of values (e.g. pack refs), so a filter on a huge table's
    ``pack_ref`` column never runs ``SELECT DISTINCT`` over that table.
    """

    class _Filter(admin.SimpleListFilter):
        def lookups(self, request, model_admin):
            return [(value, value) for value in values_qs()]

        def queryset(self, request, queryset):
            if self.value():
                return queryset.filter(**{field: self.value()})
            return queryset

    _Filter.title = title
    _Filter.parameter_name = parameter_name
    _Filter.__name__ = f"{parameter_name.title().replace('_', '')}Filter"
    return _Filter


def pack_ref_filter(field: str = "pack_ref") -> type[admin.SimpleListFilter]:
    def refs():
        from apps.packs.models import Pack

        return Pack.objects.order_by("ref").values_list("ref", flat=True)

    return values_list_filter("pack", field, field, refs)


def runner_type_filter(field: str = "runner_type") -> type[admin.SimpleListFilter]:
    def names():
        from apps.packs.models import Runtime

        return Runtime.objects.order_by("name").values_list("name", flat=True)

    return values_list_filter("runner type", field, field, names)


class PackComponentForm(forms.ModelForm):
    """Checks that ``<pack>.<name>`` is free before ``save()`` computes the (unique) ref."""

    def clean(self):
        cleaned = super().clean()
        pack, name = cleaned.get("pack"), cleaned.get("name")
        if pack is not None and name:
            ref = make_ref(pack.ref, name)
            clash = self._meta.model._default_manager.filter(ref=ref)
            if self.instance.pk is not None:
                clash = clash.exclude(pk=self.instance.pk)
            if clash.exists():
                self.add_error("name", f"{ref} already exists.")
        return cleaned


class PackComponentAdmin(IdSearchMixin, admin.ModelAdmin):
    """Base admin for rows addressed by ``<pack>.<name>``: the ref is computed, so it is read-only."""

    form = PackComponentForm
    search_fields = ("ref", "name", "description")
    list_filter = ("pack", "source")
    list_select_related = ("pack",)
    autocomplete_fields = ("pack",)
    readonly_fields = ("ref", "source", "file_path", "created", "updated")
    ordering = ("ref",)
    list_per_page = 100

    @admin.display(description="pack", ordering="pack__ref")
    def pack_link(self, obj):
        return admin_link("packs.Pack", obj.pack_id, obj.pack.ref)
