"""Inline continuations: the next execution of a sequence runs on the thread that made it runnable.

A with-items item or a chain task that ends makes the next one runnable (the conductor creates it
``scheduled`` and asks for it to be dispatched). When that happens inside a worker's run of an execution
from queue Q and the new execution goes to the same queue Q, the worker — which consumes Q by definition —
runs it itself right after the current one instead of publishing a message and waiting for the broker to
hand it back (``send_task``, the broker's delivery and the late ack were a quarter of a worker's CPU per
noop item, and the broker round trip half of a chain's transition time).

Nothing else changes: the execution is committed ``scheduled`` first, it is claimed with the same conditional
update, it goes through the same transitions and notifications. Guarantees:

- at most one continuation waits per worker thread; further executions dispatched meanwhile (a fan-out) go
  through the broker, so parallel work still spreads over every worker;
- a thread runs at most ``ATTUNE_INLINE_MAX_RUNS`` continuations in a row and stops taking new ones after
  ``ATTUNE_INLINE_MAX_SECONDS`` (a warm shutdown is not held up, other messages get their turn); whatever
  is still waiting then is published to the broker — never dropped;
- if the worker dies with a continuation waiting, the execution is still ``scheduled`` in the database and
  the scheduler's ``requeue_stale`` re-sends it after ``ATTUNE_REQUEUE_SECONDS``.

``ATTUNE_INLINE_MAX_RUNS=0`` turns continuations off.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from django.conf import settings

log = logging.getLogger("attune.executions")
_local = threading.local()


class _Scope:
    __slots__ = ("queue", "waiting", "runs", "deadline")

    def __init__(self, queue: str) -> None:
        self.queue = queue
        self.waiting: deque[int] = deque()
        self.runs = 0
        self.deadline = time.monotonic() + settings.ATTUNE_INLINE_MAX_SECONDS

    def open(self) -> bool:
        return self.runs < settings.ATTUNE_INLINE_MAX_RUNS and time.monotonic() < self.deadline


def offer(execution_id: int, queue: str) -> bool:
    """Keep ``execution_id`` to run on this thread after the current execution: True when taken (the caller
    must then not publish it), False when it must go through the broker."""
    scope: _Scope | None = getattr(_local, "scope", None)
    if scope is None or queue != scope.queue or scope.waiting or not scope.open():
        return False
    scope.waiting.append(execution_id)
    return True


@contextmanager
def worker_scope(queue: str | None) -> Iterator[None]:
    """Around a worker's run of one message from ``queue``: continuations offered meanwhile are accepted."""
    if not queue or settings.ATTUNE_INLINE_MAX_RUNS <= 0 or getattr(_local, "scope", None) is not None:
        yield
        return
    _local.scope = _Scope(queue)
    try:
        yield
    finally:
        scope, _local.scope = _local.scope, None
        _publish(scope)


def run_waiting(run: Callable[[int], object]) -> int:
    """Run the continuations offered in this scope (each may offer the next) with ``run(execution_id)``;
    returns how many ran. An error in one is logged and ends the sequence here; what is still waiting is
    published when the scope closes."""
    scope: _Scope | None = getattr(_local, "scope", None)
    if scope is None:
        return 0
    ran = 0
    while scope.waiting:
        execution_id = scope.waiting.popleft()
        scope.runs += 1
        ran += 1
        try:
            run(execution_id)
        except Exception:  # the same as a task body that raised: logged, the worker lives on
            log.exception("execution %s failed in its worker (run as a continuation)", execution_id)
            break
    return ran


def _publish(scope: _Scope) -> None:
    if not scope.waiting:
        return
    from .services import dispatch_many

    batch = [(execution_id, scope.queue) for execution_id in scope.waiting]
    scope.waiting.clear()
    dispatch_many(batch, inline=False)
