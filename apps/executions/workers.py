"""Worker presence: a row per worker process, kept alive by a heartbeat, reaped when it goes stale."""
from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from datetime import timedelta

from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from apps.core.periodic import register

from .models import Worker

log = logging.getLogger("attune.worker")

HEARTBEAT_SECONDS = float(getattr(settings, "ATTUNE_WORKER_HEARTBEAT_SECONDS", 5))
STALE_SECONDS = float(getattr(settings, "ATTUNE_WORKER_STALE_SECONDS", 30))


_current_worker_id: int | None = None


def current_worker_id() -> int | None:
    """The Worker row of this process, when it runs one."""
    return _current_worker_id


class WorkerPresence:
    """Registers this process as a worker and heartbeats until :meth:`stop`."""

    def __init__(self, queues: list[str], concurrency: int, runtimes: list[str] | None = None) -> None:
        self.queues = queues
        self.concurrency = concurrency
        self.runtimes = runtimes or []
        self.worker: Worker | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Worker:
        hostname = socket.gethostname()
        self.worker = Worker.objects.create(
            name=f"{hostname}:{os.getpid()}:{uuid.uuid4().hex[:6]}",
            hostname=hostname,
            pid=os.getpid(),
            queues=self.queues,
            runtimes=self.runtimes,
            concurrency=self.concurrency,
            mode=settings.ATTUNE_MODE,
        )
        global _current_worker_id
        _current_worker_id = self.worker.pk
        self._thread = threading.Thread(target=self._beat, name="attune-heartbeat", daemon=True)
        self._thread.start()
        log.info("worker %s online (queues: %s)", self.worker.name, ", ".join(self.queues))
        return self.worker

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            close_old_connections()
            try:
                Worker.objects.filter(pk=self.worker.pk).update(
                    last_heartbeat=timezone.now(), state=Worker.State.ONLINE
                )
            except Exception:  # the database may be briefly unavailable; the next beat retries
                log.warning("heartbeat failed", exc_info=True)
        close_old_connections()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(HEARTBEAT_SECONDS + 1)
        if self.worker is not None:
            Worker.objects.filter(pk=self.worker.pk).update(state=Worker.State.OFFLINE, last_heartbeat=timezone.now())
            log.info("worker %s offline", self.worker.name)


def online_count() -> int:
    return Worker.objects.filter(state=Worker.State.ONLINE).count()


@register("executions.reap_workers", every=5)
def reap_stale_workers() -> int:
    """Workers whose heartbeat is older than the stale limit are marked dead (claimed conditionally)."""
    cutoff = timezone.now() - timedelta(seconds=STALE_SECONDS)
    return Worker.objects.filter(state=Worker.State.ONLINE, last_heartbeat__lt=cutoff).update(state=Worker.State.DEAD)
