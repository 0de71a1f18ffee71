"""Both run modes: the database and broker really are what the mode says, and Celery round-trips."""
from __future__ import annotations

import uuid

import pytest
from django.conf import settings
from django.db import connection

from apps.core.tasks import ping
from attune.celery import app


@pytest.mark.django_db
def test_database_matches_the_mode():
    if settings.ATTUNE_MODE == "production":
        assert connection.vendor == "postgresql"
        print(f"production mode: PostgreSQL {connection.pg_version} via ATTUNE_DATABASE_URL")
    else:
        assert connection.vendor == "sqlite"
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA journal_mode")
            assert cursor.fetchone()[0] == "wal"
            cursor.execute("PRAGMA busy_timeout")
            assert cursor.fetchone()[0] >= 5000


def test_broker_and_channel_layer_match_the_mode():
    transport = app.connection_for_write().transport_cls
    layer = settings.CHANNEL_LAYERS["default"]["BACKEND"]
    if settings.ATTUNE_MODE == "production":
        assert transport == "redis"
        assert layer == "channels_redis.core.RedisChannelLayer"
        assert settings.CELERY_TASK_ACKS_LATE is True
        import redis

        info = redis.Redis.from_url(settings.ATTUNE_REDIS_URL).info("server")
        print(f"production mode: Redis {info['redis_version']} via ATTUNE_REDIS_URL")
    else:
        assert transport == "memory"
        assert layer == "channels.layers.InMemoryChannelLayer"


@pytest.mark.django_db(transaction=True)
def test_a_task_round_trips_through_the_broker(worker):
    """A real message: published to the mode's broker, consumed by a worker thread, result returned.
    (The session's worker: a second Celery worker in the same process shares kombu's global Redis event
    loop with the first, and stopping it could hang in a BRPOP read.)"""
    assert "attune" in worker.queues
    token = uuid.uuid4().hex
    result = ping.apply_async(args=[token], queue="attune")
    assert result.get(timeout=20)["pong"] == token


@pytest.mark.django_db(transaction=True)
def test_a_task_that_leaves_a_transaction_open_gets_its_connection_closed(caplog):
    """Connections are reused across tasks: one left inside a transaction would keep its locks forever."""
    from django.db import connection

    from attune.celery import _no_transaction_left_open

    connection.ensure_connection()
    connection.set_autocommit(False)  # what a task that never committed looks like
    with caplog.at_level("ERROR", logger="attune.celery"):
        _no_transaction_left_open()
    assert connection.connection is None and "left a transaction open" in caplog.text
    connection.ensure_connection()
    assert connection.get_autocommit()  # a fresh connection, back in autocommit
