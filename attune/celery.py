"""The Celery application. Task bodies take ids and re-read rows; Celery is only transport."""
from __future__ import annotations

import logging
import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "attune.settings")

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
