"""ASGI entry point: HTTP (Django) and WebSocket (Channels) on one port."""
from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "attune.settings")
django_asgi_app = get_asgi_application()


def _pooled_database_connections() -> None:
    """Under ASGI every request runs its synchronous part on a thread of its own, so Django's persistent
    connections (CONN_MAX_AGE, right for the worker's and gunicorn's long-lived threads) are never reused
    here: each request left one open until PostgreSQL ran out of connection slots and requests failed with
    500. The ASGI web process therefore uses Django's PostgreSQL connection pool (psycopg_pool) instead:
    a request borrows a connection and gives it back when it ends."""
    from django.conf import settings
    from django.db import connections

    database = settings.DATABASES["default"]
    if "postgresql" not in database["ENGINE"]:
        return  # embedded mode: SQLite
    try:
        import psycopg_pool  # noqa: F401
    except ImportError:  # without the pool: one connection per request, closed when the request ends
        database["CONN_MAX_AGE"] = 0
    else:
        database["CONN_MAX_AGE"] = 0  # Django's pool and persistent connections exclude each other
        database.setdefault("OPTIONS", {})["pool"] = {
            "min_size": 2, "max_size": settings.ATTUNE_WEB_DB_POOL_SIZE, "timeout": 10,
        }
    connections.close_all()


_pooled_database_connections()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from apps.notifications.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(URLRouter(websocket_urlpatterns)),
    }
)
