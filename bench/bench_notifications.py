#!/usr/bin/env python
"""What live notifications cost per execution, measured in-process (no HTTP, no database writes).

A noop execution makes three status changes (scheduled, running, succeeded); ``transition()`` hands each
to ``apps.notifications.services.execution_transitioned``, which publishes it on three topics
(``execution:<id>``, ``executions``, ``executions:<pack>``). This script calls that hook exactly as
``transition()`` does (outside a transaction, so the send happens at once), ``--n`` executions' worth, and
reports CPU microseconds per execution:

* ``publisher``: CPU of the publishing thread (what a web / worker process pays per execution);
* ``process``: CPU of the whole process, which in the "subscribed" cases includes the receiving side
  (embedded: the event loop thread delivering to a subscribed channel; production: a Redis pub/sub
  reader thread, standing in for the web process's);
* ``redis``: CPU of the Redis server (production), from ``INFO cpu``.

Cases: embedded with nobody subscribed and with a socket subscribed to ``executions``; production (needs
``ATTUNE_DATABASE_URL`` / ``ATTUNE_REDIS_URL``; only Redis is used) with and without a subscriber. For
scale, the same run times the three conditional UPDATEs of ``transition()`` on a SQLite row (embedded).

    .venv/bin/python bench/bench_notifications.py --mode embedded
    ATTUNE_DATABASE_URL=... ATTUNE_REDIS_URL=... .venv/bin/python bench/bench_notifications.py --mode production
"""
from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STATUSES = ("scheduled", "running", "succeeded")


def setup(mode: str) -> None:
    home = tempfile.mkdtemp(prefix="attune-bench-notify-")
    for key in [k for k in os.environ if k.startswith("ATTUNE_")]:
        if mode == "embedded" or key not in ("ATTUNE_DATABASE_URL", "ATTUNE_REDIS_URL"):
            del os.environ[key]
    os.environ.update(ATTUNE_HOME=home, ATTUNE_LOG_LEVEL="WARNING", DJANGO_SETTINGS_MODULE="attune.settings",
                      ATTUNE_CHANNEL_PREFIX="bench-notify-" + secrets.token_hex(4))
    if mode == "production" and not (os.environ.get("ATTUNE_DATABASE_URL") and os.environ.get("ATTUNE_REDIS_URL")):
        sys.exit("production mode needs ATTUNE_DATABASE_URL and ATTUNE_REDIS_URL")
    import django

    django.setup()


def executions(n: int):
    from django.utils import timezone

    from apps.executions.models import Execution

    now = timezone.now()
    return [Execution(pk=1_000_000 + i, action_ref="core.noop", pack_ref="core", runner_type="noop", created=now,
                      scheduled_at=now, started_at=now, finished_at=None) for i in range(n)]


def publish_all(rows) -> tuple[float, float]:
    """(publisher thread CPU s, process CPU s) for three status changes of each row."""
    from apps.notifications.services import execution_transitioned

    thread0, process0 = time.thread_time(), time.process_time()
    for row in rows:
        for status in STATUSES:
            row.status = status
            execution_transitioned(row)
    return time.thread_time() - thread0, time.process_time() - process0


def measure(label: str, n: int, runs: int, redis_cpu=None) -> dict:
    results = []
    for _ in range(runs):
        rows = executions(n)
        before = redis_cpu() if redis_cpu else 0.0
        thread_s, process_s = publish_all(rows)
        results.append((thread_s, process_s, (redis_cpu() - before) if redis_cpu else 0.0))
    thread_s, process_s, redis_s = (statistics.median(r[i] for r in results) for i in range(3))
    row = {"case": label, "publisher_us": thread_s * 1e6 / n, "process_us": process_s * 1e6 / n,
           "redis_us": redis_s * 1e6 / n}
    extra = f", redis {row['redis_us']:.1f}" if redis_cpu else ""
    print(f"{label:58s} publisher {row['publisher_us']:7.1f}  process {row['process_us']:7.1f}{extra}  "
          f"µs CPU per execution (median of {runs} × {n})")
    return row


def embedded(n: int, runs: int) -> None:
    from channels.layers import InMemoryChannelLayer, channel_layers

    from apps.notifications import transport

    layer = InMemoryChannelLayer(capacity=10 * n * len(STATUSES))
    channel_layers.set(transport.ALIAS, layer)
    measure("embedded, nobody subscribed", n, runs)

    # A socket subscribed to "executions": an event loop in a thread drains its channel, as uvicorn would.
    loop = asyncio.new_event_loop()
    received = 0
    ready = threading.Event()

    async def reader():
        nonlocal received
        channel = await layer.new_channel()
        await layer.group_add(transport.group_name("executions"), channel)
        transport.get_transport().attach(asyncio.get_running_loop())
        ready.set()
        while True:
            await layer.receive(channel)
            received += 1

    thread = threading.Thread(target=lambda: loop.run_until_complete(reader()), daemon=True)
    thread.start()
    ready.wait(10)
    expected = received + n * len(STATUSES) * runs
    row = measure("embedded, one socket subscribed to executions", n, runs)
    deadline = time.monotonic() + 30
    while received < expected and time.monotonic() < deadline:
        time.sleep(0.01)
    print(f"{'':58s} (delivered {received} of {expected} messages)")
    assert received == expected, "some messages were not delivered"
    baseline_updates(n, runs, row)


def baseline_updates(n: int, runs: int, row: dict) -> None:
    """For scale: the three conditional UPDATEs of transition() on one SQLite row, without the hook."""
    from django.core.management import call_command
    from django.db import connection

    from apps.core import statemachine
    from apps.executions.models import Execution

    call_command("migrate", verbosity=0)
    from apps.actions.models import Action  # noqa: F401  (models loaded)

    with connection.cursor() as cursor:
        cursor.execute("PRAGMA foreign_keys = OFF")
    execution = Execution.objects.create(action_ref="core.noop", pack_ref="core", runner_type="noop")
    saved, statemachine._listeners = statemachine._listeners, {}
    try:
        samples = []
        for _ in range(runs):
            start = time.thread_time()
            for _ in range(n):
                Execution.objects.filter(pk=execution.pk).update(status="requested")
                execution.status = "requested"
                for status in STATUSES:
                    statemachine.transition(execution, to=status)
            samples.append(time.thread_time() - start)
    finally:
        statemachine._listeners = saved
    per = statistics.median(samples) * 1e6 / n
    print(f"{'for scale: 3 transition() UPDATEs + 1 reset on SQLite':58s} {per:7.1f} µs CPU per execution; "
          f"notifications with a subscriber: {row['process_us'] / per * 100:.1f} % of that")


def production(n: int, runs: int) -> None:
    import redis

    from apps.notifications import transport

    publisher = transport.get_transport()
    assert publisher.kind == "redis", publisher
    client = redis.Redis.from_url(os.environ["ATTUNE_REDIS_URL"])

    def redis_cpu() -> float:
        info = client.info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])

    try:
        measure("production, nobody subscribed (Lua: INCR + PUBLISH × 3)", n, runs, redis_cpu)
        pubsub = client.pubsub()
        pubsub.subscribe(publisher.channel("executions"))
        received = 0
        stop = threading.Event()

        def reader():
            nonlocal received
            while not stop.is_set():
                message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
                if message is not None:
                    received += 1

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        time.sleep(0.2)
        expected = n * len(STATUSES) * runs
        measure("production, a subscriber to executions (reader in-process)", n, runs, redis_cpu)
        deadline = time.monotonic() + 30
        while received < expected and time.monotonic() < deadline:
            time.sleep(0.01)
        stop.set()
        print(f"{'':58s} (delivered {received} of {expected} messages)")
    finally:
        keys = list(client.scan_iter(match=f"{publisher.prefix}:seq:*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start:start + 1000])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["embedded", "production"], default="embedded")
    parser.add_argument("--n", type=int, default=2000, help="executions per run")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    setup(args.mode)
    print(f"bench_notifications: mode {args.mode}, python {sys.version.split()[0]}, nproc {os.cpu_count()}")
    if args.mode == "embedded":
        embedded(args.n, args.runs)
    else:
        production(args.n, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
