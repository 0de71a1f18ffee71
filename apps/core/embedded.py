"""The embedded mode's in-process pieces: a Celery worker on a thread pool and the scheduler ticker.

Celery runs over the ``memory://`` transport, so messages go through the real broker path
(serialisation, routing, acks) without any server; the worker consumes every queue.
"""
from __future__ import annotations

import logging
import threading

from celery import worker as celery_worker
from celery.result import _set_task_join_will_block
from django.conf import settings

from attune.celery import app

log = logging.getLogger("attune.embedded")


class _WorkController(celery_worker.WorkController):
    def __init__(self, *args, **kwargs):
        self.ready_event = threading.Event()
        super().__init__(*args, **kwargs)

    def on_consumer_ready(self, consumer):
        self.ready_event.set()


class EmbeddedWorker:
    """Start/stop a thread-pool Celery worker inside this process."""

    def __init__(self, concurrency: int | None = None, queues: list[str] | None = None) -> None:
        self.concurrency = concurrency or settings.ATTUNE_WORKER_CONCURRENCY
        self.queues = queues or list(settings.ATTUNE_QUEUES)
        self.controller: _WorkController | None = None
        self.thread: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> None:
        self.controller = _WorkController(
            app=app,
            concurrency=self.concurrency,
            pool="threads",
            hostname=f"embedded@{settings.ATTUNE_MODE}",
            queues=self.queues,
            loglevel="WARNING",
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
            ready_callback=None,
        )
        self.thread = threading.Thread(target=self.controller.start, name="attune-celery", daemon=True)
        self.thread.start()
        if not self.controller.ready_event.wait(timeout):
            raise RuntimeError(f"the embedded Celery worker did not start within {timeout:.0f}s")
        # Starting a worker marks this process as "inside a task"; the web side of the process is not.
        _set_task_join_will_block(False)
        log.info("embedded worker consuming %s with %d threads", ", ".join(self.queues), self.concurrency)

    def stop(self, timeout: float = 15.0) -> None:
        if self.controller is not None:
            self.controller.stop(in_sighandler=False)
        if self.thread is not None:
            self.thread.join(timeout)
