"""attune/db/postgresql: health checks skip a connection that ended its last request or task cleanly moments ago."""
from __future__ import annotations

import pytest
from django.db import DatabaseError, connection

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="the PostgreSQL backend (production mode)"),
]


@pytest.fixture
def wrapper(monkeypatch):
    """A connection of its own (the test's is inside the test transaction), counting health probes."""
    from attune.db.postgresql import base

    # Persistent connections, no pool (a test that imported attune.asgi switched this process to the pool).
    options = {k: v for k, v in connection.settings_dict.get("OPTIONS", {}).items() if k != "pool"}
    w = base.DatabaseWrapper({**connection.settings_dict, "OPTIONS": options, "CONN_HEALTH_CHECKS": True,
                              "CONN_MAX_AGE": 600}, "default")
    probes = []
    original = base.DatabaseWrapper.is_usable

    def is_usable(self):
        probes.append(self)
        return original(self)

    monkeypatch.setattr(base.DatabaseWrapper, "is_usable", is_usable)
    w.probes = probes
    yield w
    w.close()


def request(w, sql="SELECT 1"):
    """What a request or a task does with the connection: use it, then the end-of-request check (Django's
    request_finished / the worker's close_old_connections), error or not."""
    try:
        with w.cursor() as cursor:
            cursor.execute(sql)
    finally:
        w.close_if_unusable_or_obsolete()


def test_a_connection_used_cleanly_moments_ago_is_not_probed(wrapper):
    request(wrapper)  # a new connection: nothing to probe yet
    assert wrapper.healthy_at is not None
    request(wrapper)
    request(wrapper)
    assert wrapper.probes == []


def test_an_idle_connection_is_probed(wrapper, monkeypatch):
    from attune.db.postgresql import base

    request(wrapper)
    monkeypatch.setattr(base, "HEALTHY_SECONDS", 0.0)
    request(wrapper)
    assert len(wrapper.probes) == 1


def test_after_a_database_error_the_connection_is_probed(wrapper):
    request(wrapper)
    with pytest.raises(DatabaseError):
        request(wrapper, "SELECT no_such_column FROM no_such_table")
    assert wrapper.healthy_at is None  # not vouched for: never skipped on the strength of that request
    assert len(wrapper.probes) == 1  # Django probes a connection that saw an error when the request ends
    request(wrapper)
    assert wrapper.healthy_at is not None  # usable, and clean again
