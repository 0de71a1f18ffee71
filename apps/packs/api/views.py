from __future__ import annotations

import django_filters

from apps.core.api.views import ModelViewSet, RefLookupMixin
from apps.packs.models import Pack, Runtime

from .serializers import PackSerializer, RuntimeSerializer


class PackFilter(django_filters.FilterSet):
    class Meta:
        model = Pack
        fields = {"ref": ["exact", "startswith"], "source": ["exact"], "author": ["exact"]}


class PackViewSet(RefLookupMixin, ModelViewSet):
    resource = "packs"
    pack_lookup = "ref"
    queryset = Pack.objects.all()
    serializer_class = PackSerializer
    filterset_class = PackFilter
    search_fields = ["ref", "label", "description"]
    ordering_fields = ["ref", "created", "updated"]


class RuntimeViewSet(ModelViewSet):
    resource = "runtimes"
    pack_lookup = "*"  # runtimes are global: any runtimes grant shows them all
    lookup_field = "name"
    queryset = Runtime.objects.all()
    serializer_class = RuntimeSerializer
    filterset_fields = ["kind", "enabled"]
    search_fields = ["name", "description"]
    ordering_fields = ["name", "created"]
