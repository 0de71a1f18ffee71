"""Login throttling that a client cannot reset.

DRF's default client identity is the whole ``X-Forwarded-For`` header when ``NUM_PROXIES`` is unset, so a
password guesser sending a new made-up header with each attempt would never be throttled. Here the client
is the connection's address (``REMOTE_ADDR``) unless ``REST_FRAMEWORK["NUM_PROXIES"]`` says how many
trusted proxies append to ``X-Forwarded-For``.
"""
from __future__ import annotations

from rest_framework.settings import api_settings
from rest_framework.throttling import ScopedRateThrottle


class LoginRateThrottle(ScopedRateThrottle):
    """``ScopedRateThrottle`` (rate ``DEFAULT_THROTTLE_RATES[view.throttle_scope]``) keyed by client address."""

    def get_ident(self, request) -> str:
        if api_settings.NUM_PROXIES is None:
            return request.META.get("REMOTE_ADDR") or ""
        return super().get_ident(request)
