"""Every /api/v1/ route. Trailing slashes are optional (SPEC §11)."""
from __future__ import annotations

from django.urls import include, path
from rest_framework.routers import DefaultRouter


class Router(DefaultRouter):
    include_format_suffixes = False

    def __init__(self):
        super().__init__(trailing_slash="/?")


router = Router()
urlpatterns: list = []
