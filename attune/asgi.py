"""ASGI entry point: HTTP (Django) and WebSocket (Channels) on one port.

HTTP requests run Django's WSGI handler on a fixed pool of threads (``a2wsgi``), not Django's ASGI handler:
none of our views is asynchronous, and the ASGI handler runs each request's synchronous part on a new thread
of its own (a new executor, a new database connection per request, and context hand-offs through asgiref)
— it cost the single embedded process more than half its CPU per API call (docs/performance.md). On the fixed
threads each keeps its database connection like a gunicorn thread does. A request whose body has no
Content-Length (chunked upload) still goes through Django's ASGI handler, which reads such bodies (Django's
WSGI handler would see an empty body)."""
from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "attune.settings")
django_asgi_app = get_asgi_application()


def _pooled_database_connections() -> None:
    """The ASGI web process uses Django's PostgreSQL connection pool (psycopg_pool): a request borrows a
    connection and gives it back when it ends. Persistent per-thread connections (CONN_MAX_AGE, right for
    the worker's and gunicorn's long-lived threads) leaked one connection per request when every request
    ran on a new thread (Django's ASGI handler, still used for chunked bodies): PostgreSQL ran out of
    connection slots and requests failed with 500. The pool bounds the process's connections whatever
    thread a request runs on."""
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

from a2wsgi import WSGIMiddleware  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.handlers.wsgi import WSGIHandler  # noqa: E402

from apps.notifications.routing import websocket_urlpatterns  # noqa: E402

django_wsgi_on_threads = WSGIMiddleware(WSGIHandler(), workers=settings.ATTUNE_WEB_THREADS)


async def http_application(scope, receive, send):
    """Django over WSGI on the fixed threads, unless the body's length is not known up front."""
    if scope["method"] not in ("GET", "HEAD", "OPTIONS", "DELETE"):
        for name, value in scope["headers"]:
            if name == b"transfer-encoding" and b"chunked" in value.lower():
                return await django_asgi_app(scope, receive, send)
    return await django_wsgi_on_threads(scope, receive, send)


application = ProtocolTypeRouter(
    {
        "http": http_application,
        "websocket": AllowedHostsOriginValidator(URLRouter(websocket_urlpatterns)),
    }
)
