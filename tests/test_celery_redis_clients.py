"""attune/celery.py: kombu's Redis channel reuses one client per connection pool instead of building one per
publish and per ack (production mode, where the broker is Redis)."""
from __future__ import annotations

import pytest
from django.conf import settings

pytestmark = pytest.mark.skipif(not settings.CELERY_BROKER_URL.startswith("redis"),
                                reason="the Redis broker (production mode)")


def test_one_client_per_pool_and_a_new_one_for_a_new_pool():
    from attune.celery import app

    with app.connection_for_write() as connection:
        channel = connection.default_channel
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second
            assert first.ping()
        given = object()
        with channel.conn_or_acquire(given) as passed:
            assert passed is given  # a caller's own client is used as it is
        channel._pool = None  # what kombu does when it drops its pools after a connection error
        with channel.conn_or_acquire() as third:
            assert third is not first and third.connection_pool is channel.pool
            assert third.ping()
        # publishing and queue sizes still work through it
        channel._put("attune-test-reuse", {"body": "x"})
        assert channel._size("attune-test-reuse") == 1
        channel._purge("attune-test-reuse")
