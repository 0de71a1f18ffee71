"""Shared fixtures: API clients logged in as each built-in role."""
from __future__ import annotations

import time

import pytest
from django.conf import settings
from django.core.cache import cache
from django.test import TransactionTestCase
from rest_framework.test import APIClient

from apps.accounts.models import PermissionAssignment, PermissionSet
from apps.accounts.services import sync_builtin_sets

from .factories import UserFactory

PASSWORD = "correct-horse-battery"


@pytest.fixture(autouse=True)
def _fast_passwords_and_clean_cache(settings):
    """Django 5.2 hashes passwords with 1,000,000 PBKDF2 rounds (~0.8 s here): tests use a fast hasher.
    The login throttle counts in the cache, cleared around each test so one test never throttles another."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    cache.clear()
    # A transactional test's flush recreates the core pack under new ids: no cached action may outlive it.
    from apps.workflows.items import forget_actions

    forget_actions()
    yield
    cache.clear()


@pytest.fixture
def api():
    """An unauthenticated API client."""
    return APIClient()


@pytest.fixture
def admin_user(db):
    return UserFactory(username="root", is_staff=True, is_superuser=True)


@pytest.fixture
def admin_api(admin_user):
    client = APIClient()
    client.force_authenticate(admin_user)
    return client


def _role_client(role: str, packs=None):
    sync_builtin_sets()  # a transactional test's flush removes the rows the data migration made
    user = UserFactory(username=f"{role}-user")
    PermissionAssignment.objects.create(identity=user, permission_set=PermissionSet.objects.get(name=role), packs=packs)
    client = APIClient()
    client.force_authenticate(user)
    client.user = user
    return client


@pytest.fixture
def viewer_api(db):
    return _role_client("viewer")


@pytest.fixture
def operator_api(db):
    return _role_client("operator")


@pytest.fixture
def editor_api(db):
    return _role_client("editor")


_session_worker = None


@pytest.fixture(scope="session")
def worker():
    """A real Celery worker (thread pool) on the mode's broker, consuming every queue."""
    global _session_worker
    from apps.core.embedded import EmbeddedWorker

    w = EmbeddedWorker(concurrency=6, queues=list(settings.ATTUNE_QUEUES))
    w.start()
    _session_worker = w
    yield w
    _session_worker = None
    w.stop()


def _quiesce_worker(timeout: float = 30.0) -> None:
    """Drop the messages a test left on the broker and wait until the session worker runs nothing.

    A transactional test ends with a flush (TRUNCATE on PostgreSQL). A task the test left behind, run by the
    session worker at that moment, takes row locks the TRUNCATE waits on while it waits on the TRUNCATE's
    locks: a deadlock, or a test that sees a half-flushed database. So the broker is purged and the worker
    drained first."""
    if _session_worker is None:
        return
    from celery.worker import state

    from attune.celery import app

    with app.connection_for_write() as conn:
        channel = conn.default_channel
        for queue in settings.ATTUNE_QUEUES:
            try:
                channel.queue_purge(queue)
            except Exception:  # a queue nobody declared yet has nothing to purge
                pass
    deadline = time.monotonic() + timeout
    while (state.active_requests or state.reserved_requests) and time.monotonic() < deadline:
        time.sleep(0.02)


_original_fixture_teardown = TransactionTestCase._fixture_teardown


def _fixture_teardown_after_quiesce(self):
    _quiesce_worker()
    return _original_fixture_teardown(self)


TransactionTestCase._fixture_teardown = _fixture_teardown_after_quiesce
