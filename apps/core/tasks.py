"""Tasks owned by the core layer."""
from __future__ import annotations

import socket

from celery import shared_task


@shared_task(name="attune.core.ping", ignore_result=False, acks_late=False)
def ping(token: str = "") -> dict:
    """A broker round trip: health checks and tests use it to prove a worker consumes messages."""
    return {"pong": token, "host": socket.gethostname()}


@shared_task(name="attune.core.tick", ignore_result=True)
def tick() -> dict:
    """One scheduler tick, for deployments that drive it from Celery beat instead of `attune scheduler`."""
    from apps.core.periodic import run_due

    return run_due()
