"""The Celery application. Task bodies take ids and re-read rows; Celery is only transport."""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "attune.settings")

def _reuse_redis_clients() -> None:
    """kombu's Redis channel builds a new ``redis.Redis`` object (its ~200-entry response-callback table
    included) for every publish, every late ack and every un-ack bookkeeping write, each borrowing a
    connection from the same pool. That construction was ~6 % of a worker's CPU per execution and ~2 % of a
    web request. Keep one client per channel and pool instead: a ``redis.Redis`` over a connection pool is
    safe to share between threads, and a new pool (kombu replaces it after a connection error) gets a new
    client."""
    try:
        from kombu.transport import redis as kombu_redis
    except ImportError:  # pragma: no cover - redis extra not installed
        return
    if not hasattr(kombu_redis.Channel, "conn_or_acquire") or not hasattr(kombu_redis.Channel, "_create_client"):
        return  # pragma: no cover - another kombu: leave it alone

    @contextmanager
    def conn_or_acquire(self, client=None):
        if client:
            yield client
            return
        pool = self.pool
        cached = self.__dict__.get("_attune_client")
        if cached is None or cached.connection_pool is not pool:
            cached = self.__dict__["_attune_client"] = self._create_client()
        yield cached

    kombu_redis.Channel.conn_or_acquire = conn_or_acquire


_reuse_redis_clients()

app = Celery("attune")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.task_postrun.connect
def _no_transaction_left_open(**_kwargs) -> None:
    """Connections are reused across tasks (CELERY_DB_REUSE_MAX): a task that left a transaction open
    would keep its locks for as long as the thread lives. Roll such a connection back and drop it."""
    from django.db import connections

    for connection in connections.all(initialized_only=True):
        if connection.connection is not None and (connection.in_atomic_block or not connection.get_autocommit()):
            logging.getLogger("attune.celery").error(
                "a task left a transaction open on %s: connection closed (the server rolls it back)", connection.alias)
            connection.in_atomic_block = False
            connection.savepoint_ids = []
            connection.needs_rollback = False
            connection.close()
