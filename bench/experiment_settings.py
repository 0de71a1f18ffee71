"""Settings overlay for measuring what a configuration change would buy, without editing attune/settings.py.

bench_executions.py --experiments a,b sets DJANGO_SETTINGS_MODULE=bench.experiment_settings and
ATTUNE_BENCH_EXPERIMENTS=a,b for every process it starts. Known experiments:

- ``db-reuse``: ``CELERY_DB_REUSE_MAX`` very large, so Celery's Django fix-up stops closing the worker's
  database connections before and after every task (today each execution opens a new PostgreSQL session).
- ``no-result-backend``: no Celery result backend, so ``send_task`` no longer subscribes to a result channel
  that nobody reads (``task_ignore_result`` is already on; ``attune.core.ping`` round trips stop working).
- ``sqlite-persistent``: embedded mode keeps its SQLite connections (``CONN_MAX_AGE=600``) instead of opening
  one per request and per task.
- ``server-binding``: psycopg server-side parameter binding (``OPTIONS["server_side_binding"]``), which lets
  psycopg prepare statements it sees repeatedly (PostgreSQL parses and plans them once per connection).
- ``no-health-checks``: ``CONN_HEALTH_CHECKS`` off, so a persistent connection is not probed with a
  round trip at the start of every request and task.
"""
from __future__ import annotations

import os

from attune.settings import *  # noqa: F403
from attune.settings import DATABASES, EMBEDDED

EXPERIMENTS = {x.strip() for x in os.environ.get("ATTUNE_BENCH_EXPERIMENTS", "").split(",") if x.strip()}
_known = {"db-reuse", "no-result-backend", "sqlite-persistent", "server-binding", "no-health-checks"}
if EXPERIMENTS - _known:
    raise RuntimeError(f"unknown experiment(s) {sorted(EXPERIMENTS - _known)}; known: {sorted(_known)}")

if "db-reuse" in EXPERIMENTS:
    CELERY_DB_REUSE_MAX = 10**9
if "no-result-backend" in EXPERIMENTS:
    CELERY_RESULT_BACKEND = None
if "sqlite-persistent" in EXPERIMENTS and EMBEDDED:
    DATABASES["default"]["CONN_MAX_AGE"] = 600
if "server-binding" in EXPERIMENTS and not EMBEDDED:
    DATABASES["default"].setdefault("OPTIONS", {})["server_side_binding"] = True
if "no-health-checks" in EXPERIMENTS and not EMBEDDED:
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = False
