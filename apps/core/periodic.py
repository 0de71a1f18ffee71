"""The scheduler tick: housekeeping jobs registered by each layer, run by one ticker.

Layers register jobs (``register("keys.purge_expired", every=60)(fn)``) from their ``AppConfig.ready``;
``attune scheduler`` (production) or the embedded ``attune run`` process calls :func:`run_due` every
``ATTUNE_SCHEDULER_TICK_SECONDS``. Jobs must be idempotent and claim their own work with conditional
updates, so several tickers on several machines are harmless.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("attune.scheduler")


@dataclass
class Job:
    name: str
    every: float
    fn: Callable[[], object]
    last_run: float = field(default=0.0)


_jobs: dict[str, Job] = {}
_lock = threading.Lock()


def register(name: str, every: float) -> Callable[[Callable[[], object]], Callable[[], object]]:
    def decorator(fn: Callable[[], object]) -> Callable[[], object]:
        _jobs[name] = Job(name=name, every=every, fn=fn)
        return fn

    return decorator


_startup: dict[str, Callable[[], object]] = {}


def on_startup(name: str) -> Callable[[Callable[[], object]], Callable[[], object]]:
    """Recovery work to run once when a process that runs a worker starts (before it consumes)."""

    def decorator(fn: Callable[[], object]) -> Callable[[], object]:
        _startup[name] = fn
        return fn

    return decorator


def run_startup() -> dict[str, object]:
    results: dict[str, object] = {}
    for name, fn in _startup.items():
        try:
            results[name] = fn()
        except Exception as exc:
            log.exception("startup job %s failed", name)
            results[name] = f"error: {exc}"
    return results


_shutdown: dict[str, Callable[[], object]] = {}


def on_shutdown(name: str) -> Callable[[Callable[[], object]], Callable[[], object]]:
    """Clean-up to run when a scheduler process stops (e.g. stop supervised sensor processes)."""

    def decorator(fn: Callable[[], object]) -> Callable[[], object]:
        _shutdown[name] = fn
        return fn

    return decorator


def run_shutdown() -> None:
    for name, fn in _shutdown.items():
        try:
            fn()
        except Exception:
            log.exception("shutdown job %s failed", name)


def jobs() -> list[Job]:
    return list(_jobs.values())


def run_due(now: float | None = None) -> dict[str, object]:
    """Run every job whose interval has elapsed; one failing job never stops the others."""
    from django.db import close_old_connections

    now = time.monotonic() if now is None else now
    results: dict[str, object] = {}
    with _lock:
        due = [job for job in _jobs.values() if now - job.last_run >= job.every]
        for job in due:
            job.last_run = now
    for job in due:
        close_old_connections()
        try:
            results[job.name] = job.fn()
        except Exception as exc:  # logged and retried next interval
            log.exception("scheduler job %s failed", job.name)
            results[job.name] = f"error: {exc}"
    return results


class Ticker(threading.Thread):
    """Calls :func:`run_due` every ``interval`` seconds until stopped."""

    def __init__(self, interval: float) -> None:
        super().__init__(name="attune-scheduler", daemon=True)
        self.interval = interval
        self._stop_event = threading.Event()

    def run(self) -> None:
        from django.db import connections

        while not self._stop_event.is_set():
            started = time.monotonic()
            run_due()
            # Keep to the grid (tick every `interval`, not `interval` + the jobs' run time).
            elapsed = time.monotonic() - started
            self._stop_event.wait(self.interval - (elapsed % self.interval))
        connections.close_all()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout)
