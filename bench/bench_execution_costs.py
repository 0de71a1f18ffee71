#!/usr/bin/env python
"""What one execution costs, piece by piece, inside one process (no HTTP, no other load).

Companion of bench_executions.py: that one measures the system end to end; this one explains its CPU
figures by timing each step of the request and of the worker, in production settings (PostgreSQL +
Redis, a fresh database created and dropped here) or embedded settings (SQLite in a temporary home).

    source "$(bash .ci/services.sh state-dir)/env"
    .venv/bin/python bench/bench_execution_costs.py --mode production
    .venv/bin/python bench/bench_execution_costs.py --mode embedded

Each figure is the median over ``--n`` repetitions of: wall ms, CPU ms of this process (thread time) and,
in production, CPU ms of the PostgreSQL server. Nothing here changes application code; alternatives
(``ignore_result=True``, a kept database connection) are measured by calling the same functions the
application calls, differently.
"""
from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_executions as be  # noqa: E402  (CPU accounting helpers)


def setup_env(mode: str) -> tuple[str | None, str | None]:
    home = tempfile.mkdtemp(prefix="attune-costs-")
    for k in list(os.environ):
        if k.startswith("ATTUNE_") and k not in ("ATTUNE_DATABASE_URL", "ATTUNE_REDIS_URL"):
            del os.environ[k]
    os.environ.update({"ATTUNE_HOME": home, "ATTUNE_ADMIN_PASSWORD": "Costs-" + secrets.token_hex(6),
                       "ATTUNE_LOG_LEVEL": "WARNING", "DJANGO_SETTINGS_MODULE": "attune.settings"})
    if mode == "embedded":
        os.environ.pop("ATTUNE_DATABASE_URL", None)
        os.environ.pop("ATTUNE_REDIS_URL", None)
        return None, None
    db_url, redis_url = os.environ.get("ATTUNE_DATABASE_URL"), os.environ.get("ATTUNE_REDIS_URL")
    if not db_url or not redis_url:
        sys.exit("production mode needs ATTUNE_DATABASE_URL and ATTUNE_REDIS_URL (see bench_executions.py)")
    import psycopg

    name = "costs_" + secrets.token_hex(5)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    os.environ["ATTUNE_DATABASE_URL"] = urlunsplit(urlsplit(db_url)._replace(path="/" + name))
    os.environ["ATTUNE_REDIS_URL"] = urlunsplit(urlsplit(redis_url)._replace(path="/14"))
    return db_url, name


class Meter:
    def __init__(self, pg_port: int | None) -> None:
        self.pg_port = pg_port
        self.rows: list[tuple[str, float, float, float | None, str]] = []

    def pg(self) -> float:
        return be.cpu_snapshot({}, self.pg_port, None)["postgres"] if self.pg_port else 0.0

    def measure(self, label: str, fn, n: int, note: str = "", setup=None) -> None:
        """Median wall / thread-CPU per call; PostgreSQL CPU averaged over the whole loop."""
        for _ in range(min(10, n)):
            if setup:
                setup()
            fn()
        walls, cpus = [], []
        pg0 = self.pg()
        for _ in range(n):
            if setup:
                setup()
            w, c = time.perf_counter(), time.thread_time()
            fn()
            cpus.append(time.thread_time() - c)
            walls.append(time.perf_counter() - w)
        time.sleep(0.2)  # let exited backends be reaped into the postmaster's children time
        pg = (self.pg() - pg0) / n if self.pg_port else None
        self.rows.append((label, statistics.median(walls) * 1000, statistics.median(cpus) * 1000,
                          pg * 1000 if pg is not None else None, note))
        print(f"  {label:<62} wall {self.rows[-1][1]:7.2f} ms  cpu {self.rows[-1][2]:7.2f} ms"
              + (f"  postgres {pg * 1000:6.2f} ms" if pg is not None else "") + (f"  ({note})" if note else ""),
              flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["embedded", "production"], default="production")
    ap.add_argument("--n", type=int, default=200)
    args = ap.parse_args()
    admin_url, db_name = setup_env(args.mode)
    try:
        return run(args)
    finally:
        if db_name:
            import psycopg
            from django.db import connections

            connections.close_all()
            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


def run(args) -> int:
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import close_old_connections, connection, connections, transaction
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from rest_framework.test import APIRequestFactory
    from rest_framework_simplejwt.authentication import JWTAuthentication

    from apps.actions.models import Action
    from apps.executions import executor, services
    from apps.executions.api.serializers import ExecutionSerializer
    from apps.executions.models import Execution
    from apps.executions.parameters import prepare
    from attune.celery import app as celery_app

    call_command("attune", "setup", stdout=open(os.devnull, "w"))
    pg_port = None
    if args.mode == "production":
        pg_port = urlsplit(os.environ["ATTUNE_DATABASE_URL"]).port or 5432
    m = Meter(pg_port)
    n = args.n
    print(f"\n{args.mode} mode, {n} repetitions each (median); machine: {be.machine()}")

    client = Client()
    password = os.environ["ATTUNE_ADMIN_PASSWORD"]
    token = client.post("/api/v1/auth/login", {"username": "admin", "password": password},
                        content_type="application/json").json()["access"]
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    noop = Action.objects.select_related("pack", "runner_type").get(ref="core.noop")
    local = Action.objects.select_related("pack", "runner_type").get(ref="core.local")
    from apps.accounts.models import User

    admin = User.objects.get(username="admin")

    def post(ref: str, params: dict):
        def call():
            r = client.post(f"/api/v1/actions/{ref}/execute", {"parameters": params},
                            content_type="application/json", **auth)
            assert r.status_code == 201, r.content
        return call

    print("\nAPI side (POST /api/v1/actions/{ref}/execute), Django test client, no HTTP server:")
    with CaptureQueriesContext(connection) as q:
        post("core.noop", {})()
    print(f"  queries per POST: {len(q.captured_queries)}: "
          + "; ".join(x["sql"].split(" ")[0] + " " + x["sql"].split('"')[1] if '"' in x["sql"] else x["sql"][:20]
                      for x in q.captured_queries))
    m.measure("POST core.noop, whole request", post("core.noop", {}), n)
    m.measure("POST core.local {cmd: true}, whole request", post("core.local", {"cmd": "true"}), n)

    factory = APIRequestFactory()
    request = factory.post("/x", {}, format="json", HTTP_AUTHORIZATION=f"Bearer {token}")
    jwt = JWTAuthentication()
    m.measure("  JWT authentication (decode + user SELECT)", lambda: jwt.authenticate(request), n)
    m.measure("  action lookup (select_related pack, runner_type)",
              lambda: Action.objects.select_related("pack", "runner_type").get(ref="core.noop"), n)
    m.measure("  parameters.prepare(core.local, {cmd})", lambda: prepare(local, {"cmd": "true"}, user=admin), n)

    def create_only():
        with transaction.atomic():
            services.create_execution(noop, {}, user=admin, start=False)
    m.measure("  create_execution(start=False): INSERT in a transaction", create_only, n)

    scheduled: list[Execution] = []

    def make_requested():
        scheduled.append(services.create_execution(noop, {}, user=admin, start=False))

    def schedule_only():
        execution = scheduled.pop()
        with transaction.atomic():
            services.transition(execution, to="scheduled", from_=["requested"])
    m.measure("  transition requested -> scheduled (UPDATE + COMMIT)", schedule_only, n, setup=make_requested)
    m.measure("  dispatch: celery send_task as services.dispatch does it",
              lambda: celery_app.send_task(services.RUN_TASK, args=[0], queue="attune.bench.sink"), n,
              note="default: the result backend subscribes to the task's result")
    m.measure("  dispatch alternative: send_task(..., ignore_result=True)",
              lambda: celery_app.send_task(services.RUN_TASK, args=[0], queue="attune.bench.sink",
                                           ignore_result=True), n)
    one = Execution.objects.order_by("-id").first()

    def serialize():
        ExecutionSerializer(Execution.objects.get(pk=one.pk)).data  # noqa: B018
    m.measure("  ExecutionSerializer(execution).data (the 201 body)", lambda: ExecutionSerializer(one).data, n,
              note="includes get_children: one SELECT per call")
    m.measure("  of which get_children (SELECT children of a new execution)",
              lambda: [c.pk for c in one.children.all()], n)
    if args.mode == "production":
        m.measure("  connection health check (SELECT 1), once per request", lambda: connection.is_usable(), n)
    with celery_app.connection_for_write() as conn:
        conn.default_channel.queue_purge("attune.bench.sink")

    print("\nWorker side (executor.execute for one scheduled execution, in this thread):")
    pool: list[int] = []

    def make_scheduled(action=noop, params=None):
        def make():
            execution = services.create_execution(action, params or {}, user=admin, start=False)
            services.transition(execution, to="scheduled", from_=["requested"])
            pool.append(execution.pk)
        return make

    kept = "connection kept" if args.mode == "production" else "CONN_MAX_AGE=0: reconnects anyway"
    m.measure(f"execute(noop), {kept} (close_old_connections only)",
              lambda: executor.execute(pool.pop()), n, setup=make_scheduled())

    def reconnecting():
        # What Celery's DjangoWorkerFixup does around every task (task_prerun/postrun -> conn.close()).
        connections.close_all()
        executor.execute(pool.pop())
        connections.close_all()
    m.measure("execute(noop) with the connection closed before/after (Celery fixup)", reconnecting, n,
              setup=make_scheduled(), note="what the worker does today")
    m.measure("execute(core.local cmd=true), connection kept", lambda: executor.execute(pool.pop()), max(50, n // 4),
              setup=make_scheduled(local, {"cmd": "true"}), note="CPU excludes the child processes")

    def new_connection():
        connections.close_all()
        connection.ensure_connection()
    m.measure("  opening a database connection (Django ensure_connection)", new_connection, n)
    close_old_connections()
    connections.close_all()

    print("\nProcess start, for comparison:")
    import subprocess

    m.measure("subprocess.run(['/bin/sh','-c','true'])", lambda: subprocess.run(["/bin/sh", "-c", "true"]), n)
    pack = Path(ROOT / "packs" / "core" / "actions")
    m.measure("core.local's command line: sh local.sh with cmd=true on stdin",
              lambda: subprocess.run(["/bin/sh", str(pack / "local.sh")], input=b"cmd='true'\n",
                                     capture_output=True, cwd=pack.parent), n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
