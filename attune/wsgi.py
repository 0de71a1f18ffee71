"""WSGI entry point for serving the REST API and admin with gunicorn sync workers in production
(several processes per port without uvicorn's multi-worker keep-alive penalty); WebSockets stay on the
ASGI application (``attune.asgi``)."""
from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "attune.settings")
application = get_wsgi_application()
