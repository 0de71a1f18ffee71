"""The configuration generation: one token in the shared cache (Redis in production), replaced after every
committed save or delete of a rule, action, pack, runtime, trigger or user (signals connected in
``apps.rules.apps``) and after the few bulk updates of those tables (``changed()`` called by hand).

Per-process caches of those rows stay valid while the token is the one they were filled under — one cache
read per use instead of the database queries they save — and for at most ``RECHECK_SECONDS`` in any case, so a
change made some other way (SQL by hand) is seen within that bound. Without the shared cache (down, or the key
evicted) nothing is served from these caches.

Users: the rule indexes (``apps.rules.engine.rules_for``), the API's JWT user read
(``apps.accounts.authentication``) and the execute endpoint's action read (``apps.actions.selectors``).
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from django.core.cache import cache
from django.db import transaction

log = logging.getLogger(__name__)

KEY = "rules:index-generation"  # the rule indexes' name for it, kept: running processes share it
RECHECK_SECONDS = 5.0


_memos: list[RowMemo] = []


def changed(**_) -> None:
    """Something cached under the generation changed: this process forgets its cached rows now, and a new
    generation is published once the change commits (other processes then forget theirs)."""
    _forget_local()
    transaction.on_commit(_publish)


def _forget_local() -> None:
    for memo in _memos:
        memo.clear()


def _publish() -> None:
    _forget_local()  # anything cached meanwhile, inside the transaction, is cached again from committed rows
    try:
        cache.set(KEY, uuid.uuid4().hex, timeout=None)
    except Exception:  # the cache is down: readers see no generation and use nothing cached
        log.warning("could not publish a new configuration generation", exc_info=True)


_shared: list[Any] = []  # [client or None], filled on first use


def shared_redis():
    """A plain redis-py client on the shared cache's Redis (Django's Redis cache backend), or None with
    another cache (embedded: in-process memory). ``client.attune_key(name)`` is the key Django's cache uses
    for ``name``. For the few per-request reads and flags: Django's ``cache.get`` costs about three times
    the round trip in CPU."""
    if not _shared:
        from django.conf import settings

        config = settings.CACHES["default"]
        client = None
        if config["BACKEND"] == "django.core.cache.backends.redis.RedisCache" and isinstance(config["LOCATION"], str):
            import redis

            client = redis.Redis.from_url(config["LOCATION"], socket_timeout=2, socket_connect_timeout=2)
            client.attune_key = cache.make_key
        _shared.append(client)
    return _shared[0]


def _read() -> Any:
    """The stored token: with Redis the raw bytes (compared as they are, never unpickled)."""
    client = shared_redis()
    return client.get(client.attune_key(KEY)) if client is not None else cache.get(KEY)


def current(*, create: bool = False) -> Any:
    """The generation now (an opaque token), or None without the shared cache. ``create``: start one if
    there is none yet (a fresh cache), so the caches work before the first change."""
    try:
        found = _read()
        if found is None and create:
            cache.add(KEY, uuid.uuid4().hex, timeout=None)  # add: another process's new one wins
            found = _read()
        return found
    except Exception:
        return None


class RowMemo:
    """Rows (plain tuples, never model instances: each use builds its own) by key, valid under one
    generation and for at most RECHECK_SECONDS. Bounded: emptied when it reaches ``max_entries``."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self.max_entries = max_entries
        self._rows: dict[Any, tuple[Any, float, tuple | None]] = {}
        self._lock = threading.Lock()
        _memos.append(self)

    def get_or_fetch(self, key: Any, fetch: Callable[[], tuple | None]) -> tuple | None:
        generation = current(create=True)
        now = time.monotonic()
        if generation is not None:
            found = self._rows.get(key)
            if found is not None and found[0] == generation and now - found[1] < RECHECK_SECONDS:
                return found[2]
        row = fetch()
        if generation is not None:
            with self._lock:
                if len(self._rows) >= self.max_entries:
                    self._rows.clear()
                self._rows[key] = (generation, now, row)
        return row

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()
