#!/usr/bin/env python
"""End-to-end execution throughput and latency, client included, on this machine.

Starts Attune itself (fresh temporary ATTUNE_HOME; in production mode also a fresh PostgreSQL database
and a private Redis database index), logs in with a JWT, then measures through the REST API:

* ``core.noop`` throughput: N executions fired by C client threads (httpx, keep-alive), then waited for;
  executions/s = N / (first POST sent → last ``finished_at``). Median of ``--runs`` runs after a warm-up.
* ``core.local cmd=true`` (a shell process) throughput, the same way; baseline: the raw rate of
  ``subprocess.run(['/bin/sh', '-c', 'true'])`` (sequential and 2 threads), measured in this script.
* Latency of a shell action, sequential on an idle system: POST sent → ``started_at`` (running) and
  → ``finished_at`` (succeeded), plus the server-side ``created`` → ``started_at``.

Timestamps: the client's ``time.time()`` and the rows' ``created/started_at/finished_at`` share one clock
(one machine). Rows are read straight from the database (SQLite file / PostgreSQL), so waiting for the
executions puts no load on the API.

    .venv/bin/python bench/bench_executions.py --mode embedded
    bash .ci/services.sh start && source "$(bash .ci/services.sh state-dir)/env"
    .venv/bin/python bench/bench_executions.py --mode production
    .venv/bin/python bench/bench_executions.py --mode both          # embedded vs production in one run

Every process it starts runs in its own session and is stopped (SIGTERM, then SIGKILL) at the end, on
Ctrl-C, on error, and when ``--max-seconds`` runs out; the temporary database is dropped.
"""
from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import platform
import random
import resource
import secrets
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
TERMINAL = ("succeeded", "failed", "timeout", "canceled", "abandoned")
ADMIN_PASSWORD = "Bench-" + secrets.token_hex(8)
CLK_TCK = os.sysconf("SC_CLK_TCK")

EXPERIMENTS: list[str] = []  # --experiments: settings overlays from bench/experiment_settings.py

TARGET_PROD_NOOP = 200.0  # executions/s
TARGET_EMBEDDED_FACTOR = 2.0  # embedded noop within 2x of production
TARGET_SHELL_FACTOR = 0.7  # shell throughput >= 0.7 x noop throughput of the same run
TARGET_P50_RUNNING_MS = 50.0  # POST -> running, idle, shell action


class BenchError(RuntimeError):
    pass


class Deadline(BaseException):
    """--max-seconds ran out (BaseException so no broad ``except Exception`` swallows it)."""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------------------------------
# machine, statistics
# --------------------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {
        "code": code_state(),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": model,
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def code_state() -> str:
    """The commit measured, and a digest of the uncommitted application code (others edit it meanwhile)."""
    import hashlib

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        head = "?"
    digest = hashlib.sha256()
    for path in sorted((ROOT / "apps").rglob("*.py")) + sorted((ROOT / "attune").rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode())
        digest.update(path.read_bytes())
    return f"{head} + working tree apps/ attune/ sha256:{digest.hexdigest()[:12]}"


def pct(values: list[float], p: float) -> float:
    """Percentile by linear interpolation (p in 0..100)."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------------
# CPU accounting from /proc: which process spent the box's two cores
# --------------------------------------------------------------------------------------------------
def _stat(pid: int) -> tuple[str, int, int, float] | None:
    """(comm, ppid, session, cpu seconds incl. reaped children) of one process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1: raw.rindex(")")]
    rest = raw[raw.rindex(")") + 2:].split()
    ppid, session = int(rest[1]), int(rest[3])
    ticks = int(rest[11]) + int(rest[12]) + int(rest[13]) + int(rest[14])
    return comm, ppid, session, ticks / CLK_TCK


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def cpu_snapshot(roles: dict[str, int], pg_port: int | None, redis_port: int | None) -> dict[str, float]:
    """CPU seconds per role: every process of a role's session (children included once reaped); the
    PostgreSQL server on ``pg_port`` (postmaster + backends: a backend that exited is in the postmaster's
    children time); the Redis server on ``redis_port``; and this client process."""
    by_session = {sid: role for role, sid in roles.items()}
    out = {role: 0.0 for role in roles}
    out.update({"postgres": 0.0, "redis": 0.0})
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                stats[int(entry)] = st
    postmasters = set()
    if pg_port:
        postmasters = {pid for pid, st in stats.items()
                       if st[0] == "postgres" and f"-p {pg_port} " in _cmdline(pid) + " "}
    for pid, (comm, ppid, session, cpu) in stats.items():
        if session in by_session:
            out[by_session[session]] += cpu
        elif pid in postmasters or ppid in postmasters:
            out["postgres"] += cpu
        elif redis_port and comm.startswith("redis-server") and f":{redis_port}" in _cmdline(pid):
            out["redis"] += cpu
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out["client"] = ru.ru_utime + ru.ru_stime
    return out


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: round(after.get(k, 0.0) - before.get(k, 0.0), 3) for k in after}


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (all cores) since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / CLK_TCK


def foreign_load(system: System | None = None, seconds: float = 1.0) -> float:
    """Busy cores on this machine over ``seconds`` not spent by us (client + system under test)."""
    def ours() -> float:
        if system is None:
            ru = resource.getrusage(resource.RUSAGE_SELF)
            return ru.ru_utime + ru.ru_stime
        return sum(cpu_snapshot(system.roles(), system.pg_port, system.redis_port).values())

    b, m, t = machine_busy(), ours(), time.monotonic()
    time.sleep(seconds)
    mine = ours() - m
    return max(0.0, (machine_busy() - b - mine) / (time.monotonic() - t))


def wait_idle(max_wait: float, system: System | None = None, threshold: float = 0.15) -> float:
    """Wait (up to ``max_wait`` s) until nobody else keeps the CPUs busy; returns the last foreign load."""
    deadline = time.monotonic() + max_wait
    load = foreign_load(system)
    warned = False
    while load > threshold and time.monotonic() < deadline:
        if not warned:
            log(f"machine busy with other work ({load:.2f} cores): waiting up to {max_wait:.0f} s for it to end")
            warned = True
        load = foreign_load(system)
    if load > threshold:
        log(f"WARNING: measuring while other work uses {load:.2f} cores: figures are pessimistic")
    return round(load, 2)


# --------------------------------------------------------------------------------------------------
# the system under test
# --------------------------------------------------------------------------------------------------
@dataclass
class Proc:
    role: str
    popen: subprocess.Popen
    logfile: Path


@dataclass
class System:
    """One running Attune: processes, base URL, and a direct reader of the executions table."""

    mode: str
    home: Path
    port: int
    env: dict[str, str]
    procs: list[Proc] = field(default_factory=list)
    description: str = ""
    pg_admin_url: str | None = None
    pg_db: str | None = None
    pg_port: int | None = None
    redis_url: str | None = None
    redis_port: int | None = None
    _db: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ---- processes ----
    def spawn(self, role: str, argv: list[str]) -> Proc:
        logfile = self.home / f"{role}.log"
        fh = open(logfile, "ab")
        popen = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=fh, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
        fh.close()
        proc = Proc(role, popen, logfile)
        self.procs.append(proc)
        return proc

    def check_alive(self) -> None:
        for p in self.procs:
            if p.popen.poll() is not None:
                raise BenchError(f"{p.role} exited with {p.popen.returncode}; last log lines:\n{tail(p.logfile)}")

    def roles(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.procs:
            out[p.role] = p.popen.pid  # session id == pid of the session leader we started
        return out

    def stop(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            except Exception:
                pass
            self._db = None
        for p in reversed(self.procs):
            if p.popen.poll() is None:
                try:
                    os.killpg(p.popen.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 15
        for p in self.procs:
            try:
                p.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log(f"{p.role} did not stop within 15 s: SIGKILL")
        for p in self.procs:  # the whole group: leftovers (gunicorn / prefork children, actions) too
            try:
                os.killpg(p.popen.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                p.popen.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()
        if self.pg_db and self.pg_admin_url:
            try:
                import psycopg

                with psycopg.connect(self.pg_admin_url, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{self.pg_db}" WITH (FORCE)')
                log(f"dropped database {self.pg_db}")
            except Exception as exc:
                log(f"could not drop database {self.pg_db}: {exc}")
        if self.redis_url:
            try:
                import redis

                redis.Redis.from_url(self.redis_url).flushdb()
            except Exception as exc:
                log(f"could not flush {self.redis_url}: {exc}")

    # ---- reading executions straight from the database ----
    def db(self):
        if self._db is None:
            if self.mode == "embedded":
                path = self.home / "attune.sqlite3"
                self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30, isolation_level=None,
                                           check_same_thread=False)
            else:
                import psycopg

                self._db = psycopg.connect(self.env["ATTUNE_DATABASE_URL"], autocommit=True)
        return self._db

    def _query(self, sql: str) -> list[tuple]:
        cur = self.db().execute(sql)
        return cur.fetchall()

    def active_count(self, ids: list[int]) -> int:
        statuses = ",".join(f"'{s}'" for s in TERMINAL)
        lo, hi = min(ids), max(ids)
        if hi - lo + 1 == len(ids):  # one contiguous batch: a primary-key range scan is cheapest
            (n,), = self._query(f"SELECT count(*) FROM executions_execution WHERE id BETWEEN {int(lo)} AND "
                                f"{int(hi)} AND status NOT IN ({statuses})")
            return n
        total = 0
        for chunk in chunks(ids, 2000):
            (n,), = self._query(f"SELECT count(*) FROM executions_execution WHERE id IN ({chunk}) "
                                f"AND status NOT IN ({statuses})")
            total += n
        return total

    def status_of(self, execution_id: int) -> str:
        rows = self._query(f"SELECT status FROM executions_execution WHERE id = {int(execution_id)}")
        return rows[0][0] if rows else ""

    def times(self, ids: list[int]) -> dict[int, dict[str, Any]]:
        """{id: {status, created, scheduled_at, started_at, finished_at}} with epoch-second floats."""
        cols = ("created", "scheduled_at", "started_at", "finished_at")
        out: dict[int, dict[str, Any]] = {}
        for chunk in chunks(ids, 2000):
            if self.mode == "embedded":
                rows = self._query(f"SELECT id, status, {', '.join(cols)} FROM executions_execution "
                                   f"WHERE id IN ({chunk})")
                conv = sqlite_epoch
            else:
                sel = ", ".join(f"extract(epoch from {c})::float8" for c in cols)
                rows = self._query(f"SELECT id, status, {sel} FROM executions_execution WHERE id IN ({chunk})")
                conv = (lambda v: v)  # noqa: E731
            for row in rows:
                out[row[0]] = {"status": row[1], **{c: conv(v) for c, v in zip(cols, row[2:])}}
        return out


def chunks(ids: list[int], size: int):
    for i in range(0, len(ids), size):
        yield ",".join(str(int(x)) for x in ids[i:i + size])


def sqlite_epoch(value: Any) -> float | None:
    if value is None:
        return None
    dt = datetime.fromisoformat(str(value))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)  # Django stores UTC in SQLite (USE_TZ)
    return dt.timestamp()


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def base_env(home: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATTUNE_")}
    env.update({
        "ATTUNE_HOME": str(home),
        "ATTUNE_PORT": str(port),
        "ATTUNE_API_URL": f"http://127.0.0.1:{port}/api/v1",
        "ATTUNE_ADMIN_USER": "admin",
        "ATTUNE_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "ATTUNE_SECRET_KEY": secrets.token_urlsafe(48),
        "ATTUNE_ENCRYPTION_KEYS": "1:" + base64.b64encode(os.urandom(32)).decode(),
        "ATTUNE_LOGIN_THROTTLE": "1000/min",
        "PYTHONUNBUFFERED": "1",
    })
    if EXPERIMENTS:
        env["DJANGO_SETTINGS_MODULE"] = "bench.experiment_settings"
        env["ATTUNE_BENCH_EXPERIMENTS"] = ",".join(EXPERIMENTS)
    return env


def wait_http(system: System, path: str = "/health/live", timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        system.check_alive()
        try:
            r = httpx.get(system.url + path, timeout=2)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}"
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise BenchError(f"{system.url}{path} not ready within {timeout:.0f}s ({last})")


def wait_workers(system: System, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        system.check_alive()
        try:
            (n,), = system._query("SELECT count(*) FROM executions_worker WHERE state = 'online'")
            if n >= count:
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise BenchError(f"{count} worker(s) not online within {timeout:.0f}s")


def start_embedded(args) -> System:
    home = Path(tempfile.mkdtemp(prefix="attune-bench-emb-"))
    port = free_port()
    env = base_env(home, port)
    env["ATTUNE_WORKER_CONCURRENCY"] = str(args.embedded_concurrency)
    if args.log_level:
        env["ATTUNE_LOG_LEVEL"] = args.log_level
    system = System("embedded", home, port, env,
                    description=f"`attune run` (uvicorn, in-process thread worker c={args.embedded_concurrency}, "
                                f"SQLite WAL, memory:// broker)")
    log(f"embedded: ATTUNE_HOME={home} port={port}")
    system.spawn("attune-run", [PYTHON, "manage.py", "attune", "run", "--port", str(port)])
    wait_http(system)
    wait_workers(system, 1)
    return system


def start_production(args) -> System:
    db_url = os.environ.get("ATTUNE_DATABASE_URL")
    redis_url = os.environ.get("ATTUNE_REDIS_URL")
    if not db_url or not redis_url:
        raise BenchError(
            "production mode needs ATTUNE_DATABASE_URL and ATTUNE_REDIS_URL in the environment, e.g.\n"
            "  export ATTUNE_CI_STATE=/tmp/bench-state; bash .ci/services.sh start\n"
            '  source "$(bash .ci/services.sh state-dir)/env"'
        )
    import psycopg
    import redis

    home = Path(tempfile.mkdtemp(prefix="attune-bench-prod-"))
    port = free_port()
    env = base_env(home, port)
    db_name = "bench_" + secrets.token_hex(5)
    parts = urlsplit(db_url)
    bench_db_url = urlunsplit(parts._replace(path="/" + db_name))
    db_created = False
    try:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{db_name}"')
        db_created = True
        # A private Redis database index, flushed before and after, so no earlier run's messages linger.
        rparts = urlsplit(redis_url)
        redis_index = random.randint(1, 15)
        bench_redis_url = urlunsplit(rparts._replace(path=f"/{redis_index}"))
        redis.Redis.from_url(bench_redis_url).flushdb()
    except BaseException:  # nothing started yet: remove what was made so far
        if db_created:
            with psycopg.connect(db_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        shutil.rmtree(home, ignore_errors=True)
        raise
    env["ATTUNE_DATABASE_URL"] = bench_db_url
    env["ATTUNE_REDIS_URL"] = bench_redis_url
    env["ATTUNE_WORKER_PREFETCH"] = str(args.prefetch)
    if args.log_level:
        env["ATTUNE_LOG_LEVEL"] = args.log_level
    web = web_argv(args, port)
    workers = worker_argvs(args)
    system = System("production", home, port, env, pg_admin_url=db_url, pg_db=db_name, pg_port=parts.port or 5432,
                    redis_url=bench_redis_url, redis_port=rparts.port)
    system.description = "; ".join([" ".join(web[1:])] + [" ".join(w[3:]) for _, w in workers])
    log(f"production: ATTUNE_HOME={home} database={db_name} redis db {redis_index} port={port}")
    try:
        setup = subprocess.run([PYTHON, "manage.py", "attune", "setup"], cwd=ROOT, env=env, capture_output=True,
                               text=True, timeout=180)
        if setup.returncode != 0:
            raise BenchError(f"attune setup failed:\n{setup.stdout}\n{setup.stderr}")
        system.spawn("web", web)
        for role, argv in workers:
            system.spawn(role, argv)
        system.spawn("scheduler", [PYTHON, "manage.py", "attune", "scheduler"])
        wait_http(system)
        wait_workers(system, len(workers))
    except BaseException:
        system.stop()  # processes, database, Redis index
        shutil.rmtree(home, ignore_errors=True)
        raise
    return system


def web_argv(args, port: int) -> list[str]:
    gunicorn = str(Path(PYTHON).parent / "gunicorn")
    if args.web == "uvicorn":
        return [PYTHON, "-m", "uvicorn", "attune.asgi:application", "--host", "127.0.0.1", "--port", str(port),
                "--lifespan", "off", "--no-access-log", "--log-level", "warning"]
    argv = [gunicorn, "attune.wsgi:application", "-w", str(args.web_workers), "-b", f"127.0.0.1:{port}",
            "--graceful-timeout", "5", "--log-level", "warning"]
    if args.web_threads > 1:
        argv += ["-k", "gthread", "--threads", str(args.web_threads)]
    else:
        argv += ["-k", "sync"]
    return argv


def worker_argvs(args) -> list[tuple[str, list[str]]]:
    base = [PYTHON, "manage.py", "attune", "worker"]
    if args.worker_layout == "split":
        return [
            ("worker-inprocess", base + ["-Q", "attune,orchestration,actions.inprocess", "-c",
                                         str(args.worker_concurrency), "-P", args.worker_pool]),
            ("worker-shell", base + ["-Q", "actions.shell,actions.python,actions.node", "-c",
                                     str(args.shell_concurrency or args.worker_concurrency), "-P", args.worker_pool]),
        ]
    return [("worker", base + ["-c", str(args.worker_concurrency), "-P", args.worker_pool])]


# --------------------------------------------------------------------------------------------------
# the client
# --------------------------------------------------------------------------------------------------
class StdlibClient:
    """http.client with keep-alive (reconnects when the server closes): a much cheaper client than httpx,
    to show how much of the box the client itself takes (--client stdlib)."""

    def __init__(self, base_url: str, headers: dict[str, str]) -> None:
        import http.client

        u = urlsplit(base_url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        self.headers = {**headers, "Content-Type": "application/json"}

    def post(self, path: str, json: dict) -> _Response:
        body = _json_dumps(json).encode()
        self.conn.request("POST", path, body=body, headers=self.headers)
        r = self.conn.getresponse()
        data = r.read()
        if r.getheader("Connection", "").lower() == "close":
            self.conn.close()
        return _Response(r.status, data)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> StdlibClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class _Response:
    status_code: int
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


_json_dumps = json.dumps


class Api:
    kind = "httpx"

    def __init__(self, system: System) -> None:
        self.system = system
        r = httpx.post(system.url + "/api/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD},
                       timeout=30)
        if r.status_code != 200:
            raise BenchError(f"login failed: HTTP {r.status_code} {r.text[:300]}")
        self.headers = {"Authorization": f"Bearer {r.json()['access']}"}

    def client(self) -> httpx.Client | StdlibClient:
        if self.kind == "stdlib":
            return StdlibClient(self.system.url, self.headers)
        return httpx.Client(base_url=self.system.url, headers=self.headers, timeout=60,
                            limits=httpx.Limits(max_keepalive_connections=1, max_connections=1))

    @staticmethod
    def execute(client: httpx.Client | StdlibClient, action: str, parameters: dict) -> int:
        r = client.post(f"/api/v1/actions/{action}/execute", json={"parameters": parameters})
        if r.status_code != 201:
            raise BenchError(f"POST execute {action}: HTTP {r.status_code} {r.text[:300]}")
        return r.json()["id"]


def wait_terminal(system: System, ids: list[int], timeout: float, poll: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    pending = list(ids)
    while time.monotonic() < deadline:
        if system.active_count(pending) == 0:
            return True
        time.sleep(poll)
        system.check_alive()
    return False


def fire(api: Api, action: str, parameters: dict, n: int, concurrency: int
         ) -> tuple[list[int], list[float], list[float]]:
    """N POSTs from C threads as fast as they go: (ids, send times, POST round trips)."""
    ids: list[int] = [0] * n
    sends: list[float] = [0.0] * n
    rtts: list[float] = [0.0] * n
    counter = itertools.count()
    errors: list[BaseException] = []
    clients = [api.client() for _ in range(concurrency)]
    go = threading.Barrier(concurrency + 1)

    def run(client) -> None:
        try:
            go.wait()
            while not errors:
                i = next(counter)
                if i >= n:
                    return
                t = time.time()
                ids[i] = api.execute(client, action, parameters)
                sends[i] = t
                rtts[i] = time.time() - t
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c,), daemon=True) for c in clients]
    for t in threads:
        t.start()
    go.wait()
    for t in threads:
        t.join()
    for c in clients:
        c.close()
    if errors:
        raise BenchError(f"client error: {errors[0]!r}")
    return ids, sends, rtts


def throughput_run(api: Api, action: str, parameters: dict, n: int, concurrency: int, *,
                   measure_cpu: bool = True) -> dict[str, Any]:
    system = api.system
    roles = system.roles()
    before = cpu_snapshot(roles, system.pg_port, system.redis_port) if measure_cpu else None
    busy0 = machine_busy()
    wall0 = time.time()
    ids, sends, rtts = fire(api, action, parameters, n, concurrency)
    posted = time.time()
    ok = wait_terminal(system, ids, timeout=max(60.0, n / 10))
    after = cpu_snapshot(roles, system.pg_port, system.redis_port) if measure_cpu else None
    busy = machine_busy() - busy0
    rows = system.times(ids)
    statuses: dict[str, int] = {}
    for row in rows.values():
        statuses[row["status"]] = statuses.get(row["status"], 0) + 1
    finished = [r["finished_at"] for r in rows.values() if r["finished_at"]]
    first = min(sends)
    last = max(finished) if finished else float("nan")
    elapsed = last - first
    result = {
        "action": action, "n": n, "concurrency": concurrency,
        "all_terminal": ok, "statuses": statuses,
        "elapsed_s": round(elapsed, 3),
        "exec_per_s": round(n / elapsed, 1) if elapsed > 0 else 0.0,
        "post_per_s": round(n / (max(s + r for s, r in zip(sends, rtts)) - first), 1),
        "post_rtt_p50_ms": round(pct(rtts, 50) * 1000, 1),
        "post_rtt_p99_ms": round(pct(rtts, 99) * 1000, 1),
        "queue_wait_p50_ms": round(pct([r["started_at"] - r["created"] for r in rows.values()
                                        if r["started_at"] and r["created"]], 50) * 1000, 1),
    }
    if measure_cpu and before and after:
        wall = time.time() - wall0
        delta = cpu_delta(before, after)
        # Whatever the machine spent that none of our processes did: kernel threads, or someone else.
        delta["other"] = round(max(0.0, busy - sum(delta.values())), 3)
        result["cpu_s"] = delta
        result["cpu_ms_per_exec"] = {k: round(v * 1000 / n, 2) for k, v in delta.items()}
        result["cpu_total_ms_per_exec"] = round(sum(delta.values()) * 1000 / n, 2)
        # What the whole box could do for this workload if nothing else ran on it: cores / CPU seconds our
        # processes (client included) spent per execution. Robust to other load on a shared machine.
        # Embedded mode is one Python process (one GIL): about one core, whatever the box has.
        ours = sum(v for k, v in delta.items() if k != "other")
        capacity = len(os.sched_getaffinity(0)) * n / ours if ours > 0 else None
        if system.mode == "embedded" and delta.get("attune-run"):
            capacity = min(capacity or float("inf"), n / delta["attune-run"])
        result["capacity_per_s"] = round(capacity, 1) if capacity else None
        result["cpu_busy_cores"] = round(sum(delta.values()) / wall, 2)
        result["posting_s"] = round(posted - wall0, 3)
    return result


def throughput(api: Api, label: str, action: str, parameters: dict, args, profiler: Profiler | None
               ) -> dict[str, Any]:
    log(f"{label}: warm-up {args.warmup} x {action}")
    throughput_run(api, action, parameters, args.warmup, args.concurrency, measure_cpu=False)
    runs = []
    for i in range(args.runs):
        foreign = wait_idle(args.wait_idle, api.system)
        r = throughput_run(api, action, parameters, args.n, args.concurrency)
        r["foreign_load_before"] = foreign
        log(f"{label}: run {i + 1}/{args.runs}: {r['exec_per_s']}/s  ({r['n']} in {r['elapsed_s']} s; POST "
            f"{r['post_per_s']}/s, rtt p50 {r['post_rtt_p50_ms']} ms; statuses {r['statuses']}; "
            f"capacity {r.get('capacity_per_s')}/s; "
            f"cpu/exec {r.get('cpu_ms_per_exec')}; busy cores {r.get('cpu_busy_cores')})")
        runs.append(r)
    median = sorted(runs, key=lambda r: r["exec_per_s"])[len(runs) // 2]
    out = {"median_exec_per_s": median["exec_per_s"], "runs": runs, "median_run": median}
    capacities = [r["capacity_per_s"] for r in runs if r.get("capacity_per_s")]
    if capacities:
        out["median_capacity_per_s"] = statistics.median(capacities)
    if profiler is not None:
        log(f"{label}: profiled extra run (not counted)")
        profiler.start(api.system, label)
        try:
            out["profiled_run"] = throughput_run(api, action, parameters, args.n, args.concurrency)
        finally:
            profiler.stop()
    return out


def latency(api: Api, action: str, parameters: dict, n: int, idle_gap: float = 0.02) -> dict[str, Any]:
    """Sequential executions on an idle system; client send time vs the rows' timestamps."""
    system = api.system
    client = api.client()
    to_running, to_finished, created_to_running, post_rtt, send_to_created = [], [], [], [], []
    created_to_scheduled, scheduled_to_started, started_to_finished = [], [], []
    try:
        for _ in range(n):
            time.sleep(idle_gap)
            t = time.time()
            execution_id = api.execute(client, action, parameters)
            post_rtt.append(time.time() - t)
            deadline = time.monotonic() + 30
            while system.status_of(execution_id) not in TERMINAL:
                if time.monotonic() > deadline:
                    raise BenchError(f"execution {execution_id} not terminal after 30 s")
                time.sleep(0.002)
            row = system.times([execution_id])[execution_id]
            if row["status"] != "succeeded":
                raise BenchError(f"execution {execution_id} ended {row['status']}")
            to_running.append(row["started_at"] - t)
            to_finished.append(row["finished_at"] - t)
            created_to_running.append(row["started_at"] - row["created"])
            send_to_created.append(row["created"] - t)
            created_to_scheduled.append(row["scheduled_at"] - row["created"])
            scheduled_to_started.append(row["started_at"] - row["scheduled_at"])
            started_to_finished.append(row["finished_at"] - row["started_at"])
    finally:
        client.close()

    def summary(values: list[float]) -> dict[str, float]:
        return {"p50_ms": round(pct(values, 50) * 1000, 1), "p99_ms": round(pct(values, 99) * 1000, 1),
                "mean_ms": round(statistics.fmean(values) * 1000, 1)}

    return {
        "action": action, "n": n,
        "post_to_running": summary(to_running),
        "post_to_succeeded": summary(to_finished),
        "created_to_running": summary(created_to_running),
        "post_to_created": summary(send_to_created),
        "post_rtt": summary(post_rtt),
        "created_to_scheduled": summary(created_to_scheduled),
        "scheduled_to_started": summary(scheduled_to_started),
        "started_to_finished": summary(started_to_finished),
    }


# --------------------------------------------------------------------------------------------------
# baseline: raw process start
# --------------------------------------------------------------------------------------------------
def raw_subprocess(count: int, threads: int) -> float:
    def loop(k: int) -> None:
        for _ in range(k):
            subprocess.run(["/bin/sh", "-c", "true"], check=True)

    loop(20)  # warm
    per = count // threads
    workers = [threading.Thread(target=loop, args=(per,)) for _ in range(threads)]
    t = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return round(per * threads / (time.perf_counter() - t), 1)


# --------------------------------------------------------------------------------------------------
# optional py-spy profiles of the server processes during one extra (unmeasured) run
# --------------------------------------------------------------------------------------------------
class Profiler:
    def __init__(self, outdir: Path, rate: int) -> None:
        self.outdir = outdir
        self.rate = rate
        self.pyspy = shutil.which("py-spy") or str(Path(PYTHON).parent / "py-spy")
        self.running: list[subprocess.Popen] = []

    def start(self, system: System, label: str) -> None:
        self.outdir.mkdir(parents=True, exist_ok=True)
        for role, sid in system.roles().items():
            if role == "scheduler":
                continue
            for pid in session_pids(sid):
                cmd = _cmdline(pid)
                if "python" not in cmd and "gunicorn" not in cmd:
                    continue
                if "gunicorn" in cmd and pid == sid and "-w" in cmd:
                    continue  # the gunicorn arbiter does not serve requests
                out = self.outdir / f"{label.replace(' ', '-')}-{role}-{pid}.txt"
                self.running.append(subprocess.Popen(
                    [self.pyspy, "record", "--pid", str(pid), "--rate", str(self.rate), "--format", "raw",
                     "--nonblocking", "--gil", "--output", str(out)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        time.sleep(1.0)  # let py-spy attach

    def stop(self) -> None:
        for p in self.running:
            try:
                p.send_signal(signal.SIGINT)
            except ProcessLookupError:
                pass
        for p in self.running:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.running.clear()


def session_pids(sid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st and st[2] == sid:
                pids.append(int(entry))
    return sorted(pids)


# --------------------------------------------------------------------------------------------------
# one mode, end to end
# --------------------------------------------------------------------------------------------------
def bench_mode(mode: str, args) -> dict[str, Any]:
    tests = set(args.tests.split(","))
    result: dict[str, Any] = {"mode": mode, "code_at_start": code_state()}
    if "raw" in tests:
        log("raw subprocess.run(['/bin/sh','-c','true']) rate (system not started yet)")
        result["foreign_load_before"] = wait_idle(args.wait_idle)
        seq = [raw_subprocess(args.raw_n, 1) for _ in range(3)]
        two = [raw_subprocess(args.raw_n, 2) for _ in range(3)]
        result["raw_sh_seq_runs"], result["raw_sh_2threads_runs"] = seq, two
        result["raw_sh_seq_per_s"] = statistics.median(seq)
        result["raw_sh_2threads_per_s"] = statistics.median(two)
        log(f"raw sh: {result['raw_sh_seq_per_s']}/s sequential, {result['raw_sh_2threads_per_s']}/s with 2 threads")
    t0 = time.monotonic()
    system = start_embedded(args) if mode == "embedded" else start_production(args)
    try:
        result["startup_s"] = round(time.monotonic() - t0, 1)
        result["config"] = system.description
        log(f"{mode} up in {result['startup_s']} s: {system.description}")
        api = Api(system)
        api.kind = args.client
        # The first executions pay imports and connection set-up: not measured.
        for action, params in (("core.noop", {}), ("core.local", {"cmd": "true"})):
            with api.client() as c:
                wait_terminal(system, [Api.execute(c, action, params) for _ in range(5)], timeout=60)
        profiler = Profiler(Path(args.profile), args.profile_rate) if args.profile else None
        if "noop" in tests:
            result["noop"] = throughput(api, f"{mode} noop", "core.noop", {}, args, profiler)
        if "shell" in tests:
            result["shell"] = throughput(api, f"{mode} shell", "core.local", {"cmd": "true"}, args, profiler)
        if "latency" in tests:
            result["foreign_load_before_latency"] = wait_idle(args.wait_idle, system)
            log(f"{mode} latency: {args.latency_n} sequential core.local cmd=true")
            result["latency_shell"] = latency(api, "core.local", {"cmd": "true"}, args.latency_n)
            log(f"  {result['latency_shell']}")
            log(f"{mode} latency: {args.latency_n // 2} sequential core.noop")
            result["latency_noop"] = latency(api, "core.noop", {}, args.latency_n // 2)
            log(f"  {result['latency_noop']}")
        if args.keep_logs:
            for p in system.procs:
                dest = Path(args.keep_logs) / f"{mode}-{p.logfile.name}"
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(p.logfile, dest)
        result["log_bytes"] = {p.role: p.logfile.stat().st_size for p in system.procs if p.logfile.exists()}
        result["code_at_end"] = code_state()
        if result["code_at_end"] != result["code_at_start"]:
            log(f"WARNING: application code changed during the {mode} run (servers loaded the old code; "
                f"{result['code_at_start']} -> {result['code_at_end']})")
    except BaseException:
        for p in system.procs:
            log(f"--- {p.role} log tail ---\n{tail(p.logfile)}")
        raise
    finally:
        log(f"stopping {mode} system")
        system.stop()
        shutil.rmtree(system.home, ignore_errors=True)
    return result


# --------------------------------------------------------------------------------------------------
# summary
# --------------------------------------------------------------------------------------------------
def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def summarize(results: dict[str, dict[str, Any]], args) -> str:
    m = machine()
    lines = [
        "",
        "=" * 100,
        f"Attune execution benchmark — {time.strftime('%Y-%m-%d %H:%M:%S')}",
        f"machine: nproc={m['nproc']}  cpu={m['cpu']}  mem={m['memory']}  kernel={m['kernel']}  "
        f"python={m['python']}  code={m['code']}",
        f"modes: {', '.join(results)}   n={args.n}  concurrency={args.concurrency}  runs={args.runs} (median)  "
        f"warm-up={args.warmup}  latency n={args.latency_n}  client={args.client}",
    ]
    for mode, r in results.items():
        lines.append(f"{mode}: {r.get('config', '')}")
        if r.get("code_at_end") and r.get("code_at_end") != r.get("code_at_start"):
            lines.append(f"{mode}: WARNING the application code changed during this run")
    if EXPERIMENTS:
        lines.append(f"EXPERIMENTS (settings overlays, not the shipped configuration): {', '.join(EXPERIMENTS)}")
    lines.append("-" * 100)
    row = "{:<11} {:<52} {:>12} {:>22}  {}"
    lines.append(row.format("mode", "figure", "value", "baseline / target", "verdict"))
    lines.append("-" * 100)
    prod_noop = results.get("production", {}).get("noop", {}).get("median_exec_per_s")
    for mode, r in results.items():
        noop = r.get("noop", {}).get("median_exec_per_s")
        shell = r.get("shell", {}).get("median_exec_per_s")
        if "raw_sh_seq_per_s" in r:
            lines.append(row.format(mode, "raw subprocess.run sh -c true, sequential /s", r["raw_sh_seq_per_s"],
                                    "(baseline)", ""))
            lines.append(row.format(mode, "raw subprocess.run sh -c true, 2 threads /s", r["raw_sh_2threads_per_s"],
                                    "(baseline)", ""))
        if noop is not None:
            if mode == "production":
                lines.append(row.format(mode, "core.noop executions/s (API -> succeeded)", noop,
                                        f">= {TARGET_PROD_NOOP:g}", verdict(noop >= TARGET_PROD_NOOP)))
            else:
                target = prod_noop / TARGET_EMBEDDED_FACTOR if prod_noop else None
                lines.append(row.format(
                    mode, "core.noop executions/s (API -> succeeded)", noop,
                    f">= prod {prod_noop}/2 = {target:.1f}" if target else "prod not in this run",
                    verdict(noop >= target if target else None)))
        if noop is not None and r["noop"].get("median_capacity_per_s"):
            lines.append(row.format(mode, "  noop capacity (cores / our CPU per execution)",
                                    r["noop"]["median_capacity_per_s"], "(other load excluded)", ""))
        if shell is not None:
            target = noop * TARGET_SHELL_FACTOR if noop else None
            lines.append(row.format(
                mode, "core.local cmd=true executions/s", shell,
                f">= 0.7 x noop {noop} = {target:.1f}" if target else "noop not in this run",
                verdict(shell >= target if target else None)))
            if r["shell"].get("median_capacity_per_s"):
                lines.append(row.format(mode, "  shell capacity (cores / our CPU per execution)",
                                        r["shell"]["median_capacity_per_s"], "(other load excluded)", ""))
            if "raw_sh_2threads_per_s" in r:
                lines.append(row.format(mode, "  shell exec/s as a share of raw sh (2 threads)",
                                        f"{shell / r['raw_sh_2threads_per_s']:.1%}", "(context)", ""))
        lat = r.get("latency_shell")
        if lat:
            p50 = lat["post_to_running"]["p50_ms"]
            lines.append(row.format(mode, "shell latency POST -> running p50 / p99 ms",
                                    f"{p50} / {lat['post_to_running']['p99_ms']}",
                                    f"p50 <= {TARGET_P50_RUNNING_MS:g}", verdict(p50 <= TARGET_P50_RUNNING_MS)))
            lines.append(row.format(mode, "shell latency POST -> succeeded p50 / p99 ms",
                                    f"{lat['post_to_succeeded']['p50_ms']} / {lat['post_to_succeeded']['p99_ms']}",
                                    "", ""))
            lines.append(row.format(mode, "shell server-side created -> started_at p50 / p99 ms",
                                    f"{lat['created_to_running']['p50_ms']} / {lat['created_to_running']['p99_ms']}",
                                    "", ""))
            lines.append(row.format(mode, "shell POST round trip (201 received) p50 / p99 ms",
                                    f"{lat['post_rtt']['p50_ms']} / {lat['post_rtt']['p99_ms']}", "", ""))
        lat = r.get("latency_noop")
        if lat:
            lines.append(row.format(mode, "noop latency POST -> running / succeeded p50 ms",
                                    f"{lat['post_to_running']['p50_ms']} / {lat['post_to_succeeded']['p50_ms']}",
                                    "", ""))
    lines.append("-" * 100)
    for mode, r in results.items():
        other = [x["cpu_s"].get("other", 0) / x["elapsed_s"] for k in ("noop", "shell") for x in r.get(k, {}).get("runs", [])
                 if x.get("cpu_s") and x.get("elapsed_s")]
        if other:
            lines.append(f"{mode}: CPU used by others on this machine during the measured runs: "
                         f"{min(other):.2f}-{max(other):.2f} cores (0 = the box was ours)")
    for mode, r in results.items():
        for key in ("noop", "shell"):
            run = r.get(key, {}).get("median_run")
            if run and "cpu_ms_per_exec" in run:
                parts = ", ".join(f"{k} {v}" for k, v in run["cpu_ms_per_exec"].items())
                lines.append(f"{mode} {key}: CPU ms per execution (median run): {parts}; total "
                             f"{run['cpu_total_ms_per_exec']} ms; busy cores {run['cpu_busy_cores']}; POST rtt p50 "
                             f"{run['post_rtt_p50_ms']} ms p99 {run['post_rtt_p99_ms']} ms")
    lines.append("=" * 100)
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["embedded", "production", "both"], default="embedded")
    p.add_argument("--n", type=int, default=1000, help="executions per throughput run (noop and shell)")
    p.add_argument("--concurrency", type=int, default=8, help="client threads firing POSTs")
    p.add_argument("--client", choices=["httpx", "stdlib"], default="httpx",
                   help="HTTP client of the load generator: httpx (default) or the much cheaper http.client")
    p.add_argument("--runs", type=int, default=3, help="measured runs per figure (the median is reported)")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--latency-n", type=int, default=200)
    p.add_argument("--raw-n", type=int, default=1000, help="processes per raw subprocess measurement")
    p.add_argument("--tests", default="raw,noop,shell,latency", help="subset of raw,noop,shell,latency")
    p.add_argument("--embedded-concurrency", type=int, default=8, help="ATTUNE_WORKER_CONCURRENCY of attune run")
    p.add_argument("--web", choices=["gunicorn", "uvicorn"], default="gunicorn", help="production web tier")
    p.add_argument("--web-workers", type=int, default=2, help="gunicorn -w")
    p.add_argument("--web-threads", type=int, default=1, help="gunicorn --threads (>1: -k gthread)")
    p.add_argument("--worker-layout", choices=["single", "split"], default="single",
                   help="one worker on every queue, or one for in-process queues + one for process queues")
    p.add_argument("--worker-pool", choices=["threads", "prefork", "solo"], default="threads")
    p.add_argument("--worker-concurrency", type=int, default=8)
    p.add_argument("--shell-concurrency", type=int, default=0, help="-c of the shell worker (split layout)")
    p.add_argument("--prefetch", type=int, default=4, help="ATTUNE_WORKER_PREFETCH")
    p.add_argument("--experiments", default="",
                   help="comma-separated settings overlays from bench/experiment_settings.py (not the shipped "
                        "configuration: for measuring what a change would buy)")
    p.add_argument("--log-level", default="", help="ATTUNE_LOG_LEVEL for the servers (default: theirs, INFO)")
    p.add_argument("--profile", default="", help="directory: py-spy one extra run per figure (not counted)")
    p.add_argument("--profile-rate", type=int, default=200)
    p.add_argument("--keep-logs", default="", help="directory to copy the server logs to")
    p.add_argument("--json", default="", help="write all figures to this file")
    p.add_argument("--max-seconds", type=int, default=900, help="hard bound for the whole script")
    p.add_argument("--wait-idle", type=float, default=60,
                   help="before each measured figure, wait up to this many seconds for other work on the machine "
                        "to stop (it is reported either way)")
    args = p.parse_args()

    def on_alarm(*_):
        raise Deadline(f"--max-seconds {args.max_seconds} ran out")

    def on_term(*_):
        raise KeyboardInterrupt

    EXPERIMENTS.extend(x.strip() for x in args.experiments.split(",") if x.strip())
    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_term)
    signal.alarm(args.max_seconds)
    modes = ["embedded", "production"] if args.mode == "both" else [args.mode]
    if "production" in modes and not (os.environ.get("ATTUNE_DATABASE_URL") and os.environ.get("ATTUNE_REDIS_URL")):
        print("error: production mode needs ATTUNE_DATABASE_URL and ATTUNE_REDIS_URL (a PostgreSQL role that may "
              "CREATE DATABASE, and a Redis). For a private pair on loopback:\n"
              "  export ATTUNE_CI_STATE=/tmp/bench-state; bash .ci/services.sh start\n"
              '  source "$(bash .ci/services.sh state-dir)/env"', file=sys.stderr)
        return 2
    results: dict[str, dict[str, Any]] = {}
    try:
        for mode in modes:
            results[mode] = bench_mode(mode, args)
    except (BenchError, Deadline, KeyboardInterrupt) as exc:
        log(f"aborted: {exc!r}")
        if results:
            print(summarize(results, args))
        return 1
    finally:
        signal.alarm(0)
    print(summarize(results, args))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "args": vars(args), "results": results},
                                              indent=2, default=str))
        log(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
