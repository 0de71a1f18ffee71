"""Health endpoints: liveness, readiness (DB and, in production, Redis), and details."""
from __future__ import annotations

import time
from collections.abc import Callable

from django.conf import settings
from django.db import connection
from django.http import JsonResponse
from django.views.decorators.http import require_GET


def live(request):
    return JsonResponse({"status": "ok"})


def check_database() -> dict:
    started = time.perf_counter()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:  # reported, not raised: readiness must answer
        return {"ok": False, "error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}
    return {"ok": True, "vendor": connection.vendor, "latency_ms": round((time.perf_counter() - started) * 1000, 2)}


def check_redis() -> dict:
    if settings.EMBEDDED:
        return {"ok": True, "skipped": "embedded mode uses the in-process broker"}
    import redis

    started = time.perf_counter()
    try:
        client = redis.Redis.from_url(settings.ATTUNE_REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
        client.ping()
    except Exception as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 2)}


# Higher layers add their own checks (e.g. executions: online workers) from AppConfig.ready().
_extra_checks: dict[str, Callable[[], dict]] = {}


def register_check(name: str, check: Callable[[], dict]) -> None:
    _extra_checks[name] = check


def run_checks() -> dict[str, dict]:
    checks = {"database": check_database(), "broker": check_redis()}
    if checks["database"]["ok"]:
        for name, check in _extra_checks.items():
            try:
                checks[name] = check()
            except Exception as exc:
                checks[name] = {"ok": False, "error": str(exc)}
    return checks


@require_GET
def ready(request):
    checks = run_checks()
    ok = all(c["ok"] for c in checks.values())
    return JsonResponse({"status": "ok" if ok else "unavailable", "checks": checks}, status=200 if ok else 503)


@require_GET
def details(request):
    checks = run_checks()
    ok = all(c["ok"] for c in checks.values())
    from apps import __version__

    return JsonResponse(
        {"status": "ok" if ok else "unavailable", "mode": settings.ATTUNE_MODE, "version": __version__, "checks": checks},
        status=200 if ok else 503,
    )
