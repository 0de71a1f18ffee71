#!/usr/bin/env python
"""Workflow conductor throughput, end to end, on this machine (SPEC §7: "10,000 items is a normal workload").

Starts Attune itself like bench_executions.py (fresh temporary ATTUNE_HOME; in production mode a fresh
PostgreSQL database of its own and a private Redis database index, separate web / worker / scheduler
processes), registers a small pack ``benchwf`` (written into ``ATTUNE_HOME/packs`` before set-up) and
measures through the REST API:

1. ``with_items`` over ``core.noop`` at ``--sizes`` items (default 100, 1,000, 10,000; ``concurrency`` 50):
   wall time from the POST that requests the workflow to the workflow's ``finished_at``, and per-item cost
   (wall / items); linear growth is checked as per-item@10000 / per-item@1000.
2. a ``--chain``-task sequential chain of ``core.noop`` (default 100): time per transition (wall / tasks), and
   from the rows, the gap between one task's child finishing and the next child being created.
3. ``with_items`` over ``core.local cmd=true`` (``--shell-items``, default 1,000) against the raw spawn rate
   of the same command started the way the worker starts it (``subprocess.Popen`` of ``local.sh``, own
   session, pipes, the parameter document on stdin), sequentially and with as many threads as the worker.

Also, per run: CPU seconds per role (worker, scheduler, web, PostgreSQL, Redis, this client) from /proc,
peak RSS of the worker process(es) during the run (VmHWM, reset before each run), SQL statements per item
(the worker and scheduler run under a tiny wrapper that counts ``CursorWrapper.execute`` calls), and in
production the commits and rows written per item from ``pg_stat_database``.

    .venv/bin/python bench/bench_workflows.py --mode embedded
    ATTUNE_DATABASE_URL=postgres://USER:PW@127.0.0.1:5432/postgres ATTUNE_REDIS_URL=redis://127.0.0.1:6379/0 \\
        .venv/bin/python bench/bench_workflows.py --mode production --db-name attune_benchwf --redis-db 7
    .venv/bin/python bench/bench_workflows.py --mode both --json /tmp/wf.json --profile /tmp/wf-prof

Targets (production mode): 10,000 noop items in <= 60 s; per-item cost at 10,000 within 1.5x of the cost
at 1,000; <= 20 ms per transition in the sequential chain. The script prints PASS/FAIL for each (in
embedded mode too, for information). Every process it starts runs in its own session and is stopped at the
end, on Ctrl-C, on error and when ``--max-seconds`` runs out; the database is dropped, the home removed.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------------------
# `bench_workflows.py _probe PREFIX manage.py ...`: run a server process with a SQL statement counter.
# Kept before the heavy imports: it is the entry point of the worker / scheduler / embedded processes.
# --------------------------------------------------------------------------------------------------
def _probe_main(argv: list[str]) -> None:
    import json
    import runpy
    import threading
    import time

    prefix, cmd = argv[0], argv[1:]
    sys.path.insert(0, str(ROOT))
    from django.db.backends import utils as dbutils

    lock = threading.Lock()
    counts = {"sql": 0}

    def count() -> None:
        with lock:
            counts["sql"] += 1

    execute, executemany = dbutils.CursorWrapper.execute, dbutils.CursorWrapper.executemany

    def counted_execute(self, sql, params=None):
        count()
        return execute(self, sql, params)

    def counted_executemany(self, sql, param_list):
        count()
        return executemany(self, sql, param_list)

    dbutils.CursorWrapper.execute = counted_execute
    dbutils.CursorWrapper.executemany = counted_executemany

    def write() -> None:
        path = f"{prefix}-{os.getpid()}.json"
        tmp = path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump({"pid": os.getpid(), "sql": counts["sql"]}, fh)
        os.replace(tmp, path)

    def writer() -> None:
        while True:
            try:
                write()
            except OSError:
                pass
            time.sleep(0.2)

    def start_writer() -> None:
        counts["sql"] = 0
        threading.Thread(target=writer, name="bench-sql-probe", daemon=True).start()

    os.register_at_fork(after_in_child=start_writer)  # prefork pool children count on their own
    start_writer()
    sys.argv = cmd
    runpy.run_path(str(ROOT / cmd[0]), run_name="__main__")


if __name__ == "__main__" and len(sys.argv) > 2 and sys.argv[1] == "_probe":
    _probe_main(sys.argv[2:])
    sys.exit(0)


import argparse  # noqa: E402
import glob  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402
from urllib.parse import urlsplit, urlunsplit  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
import bench_executions as be  # noqa: E402  (System, process control, CPU accounting, client)

PYTHON = sys.executable
SELF = str(Path(__file__).resolve())
TERMINAL = be.TERMINAL

TARGET_10K_S = 60.0  # 10,000 noop items, request -> workflow terminal
TARGET_LINEAR = 1.5  # per-item cost at 10,000 / per-item cost at 1,000
TARGET_TRANSITION_MS = 20.0  # sequential chain, per transition


def log(msg: str) -> None:
    print(f"[bench-wf {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------------------------------
# the benchmark pack
# --------------------------------------------------------------------------------------------------
def write_pack(home: Path, concurrency: int, chain: int) -> None:
    root = home / "packs" / "benchwf"
    (root / "actions" / "workflows").mkdir(parents=True, exist_ok=True)
    (root / "pack.yaml").write_text("ref: benchwf\nversion: 1.0.0\ndescription: bench_workflows.py workloads\n")
    # (not `items`: `parameters.items` would be the dict's method in Jinja)
    items_params = "parameters:\n  xs: {type: array, required: true}\n"
    for name, action, task_input in (("items_noop", "core.noop", None),
                                     ("items_shell", "core.local", '{cmd: "true"}')):
        (root / "actions" / f"{name}.yaml").write_text(
            f"name: {name}\nrunner_type: workflow\nentry_point: workflows/{name}.yaml\n{items_params}")
        body = (f"version: 1.0\ntasks:\n  - name: each\n    action: {action}\n"
                f"    with_items: \"{{{{ parameters.xs }}}}\"\n    concurrency: {concurrency}\n")
        if task_input:
            body += f"    input: {task_input}\n"
        (root / "actions" / "workflows" / f"{name}.yaml").write_text(body)
    # The same with-items, items generated inside the workflow (no large parameter on the execution).
    (root / "actions" / "items_noop_range.yaml").write_text(
        "name: items_noop_range\nrunner_type: workflow\nentry_point: workflows/items_noop_range.yaml\n"
        "parameters:\n  n: {type: integer, required: true}\n")
    (root / "actions" / "workflows" / "items_noop_range.yaml").write_text(
        "version: 1.0\ntasks:\n  - name: each\n    action: core.noop\n"
        f"    with_items: \"{{{{ range(parameters.n) | list }}}}\"\n    concurrency: {concurrency}\n")
    lines = ["version: 1.0", "tasks:"]
    for i in range(chain):
        lines += [f"  - name: t{i:04d}", "    action: core.noop"]
        if i + 1 < chain:
            lines += ["    next:", f"      - do: [t{i + 1:04d}]"]
    (root / "actions" / "chain.yaml").write_text("name: chain\nrunner_type: workflow\nentry_point: workflows/chain.yaml\n")
    (root / "actions" / "workflows" / "chain.yaml").write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------------------------------
# starting the system (bench_executions' System, with our own database name / Redis index and the probe)
# --------------------------------------------------------------------------------------------------
def probed(argv: list[str], home: Path, role: str, enabled: bool) -> list[str]:
    """[PYTHON, manage.py, ...] -> [PYTHON, this file, _probe, PREFIX, manage.py, ...]."""
    if not enabled or argv[:2] != [PYTHON, "manage.py"]:
        return argv
    return [PYTHON, SELF, "_probe", str(home / f"sqlcount-{role}")] + argv[1:]


def start_embedded(args) -> be.System:
    home = Path(tempfile.mkdtemp(prefix="attune-benchwf-emb-"))
    system = None
    try:
        write_pack(home, args.concurrency, args.chain)
        port = be.free_port()
        env = be.base_env(home, port)
        env["ATTUNE_WORKER_CONCURRENCY"] = str(args.worker_concurrency)
        if args.log_level:
            env["ATTUNE_LOG_LEVEL"] = args.log_level
        system = be.System("embedded", home, port, env,
                           description=f"`attune run` (uvicorn, in-process thread worker c={args.worker_concurrency}, "
                                       f"SQLite WAL, memory:// broker)")
        log(f"embedded: ATTUNE_HOME={home} port={port}")
        system.spawn("attune-run", probed([PYTHON, "manage.py", "attune", "run", "--port", str(port)], home,
                                          "attune-run", args.count_sql))
        be.wait_http(system, timeout=180)
        be.wait_workers(system, 1)
    except BaseException:
        if system is not None:
            system.stop()
        shutil.rmtree(home, ignore_errors=True)
        raise
    return system


def start_production(args) -> be.System:
    import psycopg
    import redis

    db_url, redis_url = args.database_url, args.redis_url
    home = Path(tempfile.mkdtemp(prefix="attune-benchwf-prod-"))
    system = None
    db_created = False
    parts = urlsplit(db_url)
    try:
        write_pack(home, args.concurrency, args.chain)
        port = be.free_port()
        env = be.base_env(home, port)
        bench_db_url = urlunsplit(parts._replace(path="/" + args.db_name))
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{args.db_name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{args.db_name}"')
        db_created = True
        rparts = urlsplit(redis_url)
        bench_redis_url = urlunsplit(rparts._replace(path=f"/{args.redis_db}"))
        redis.Redis.from_url(bench_redis_url).flushdb()
        env["ATTUNE_DATABASE_URL"] = bench_db_url
        env["ATTUNE_REDIS_URL"] = bench_redis_url
        env["ATTUNE_WORKER_PREFETCH"] = str(args.prefetch)
        if args.log_level:
            env["ATTUNE_LOG_LEVEL"] = args.log_level
        web = be.web_argv(args, port)
        workers = be.worker_argvs(args)
        system = be.System("production", home, port, env, pg_admin_url=db_url, pg_db=args.db_name,
                           pg_port=parts.port or 5432, redis_url=bench_redis_url, redis_port=rparts.port)
        system.description = "; ".join([" ".join(web[1:])] + [" ".join(w[3:]) for _, w in workers]
                                       + [f"prefetch {args.prefetch}"])
        log(f"production: ATTUNE_HOME={home} database={args.db_name} redis db {args.redis_db} port={port}")
        setup = subprocess.run([PYTHON, "manage.py", "attune", "setup"], cwd=be.ROOT, env=env, capture_output=True,
                               text=True, timeout=300)
        if setup.returncode != 0:
            raise be.BenchError(f"attune setup failed:\n{setup.stdout}\n{setup.stderr}")
        system.spawn("web", web)
        for role, argv in workers:
            system.spawn(role, probed(argv, home, role, args.count_sql))
        system.spawn("scheduler", probed([PYTHON, "manage.py", "attune", "scheduler"], home, "scheduler",
                                         args.count_sql))
        be.wait_http(system)
        be.wait_workers(system, len(workers))
    except BaseException:
        if system is not None:
            system.stop()  # drops the database too
        elif db_created:
            with psycopg.connect(db_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{args.db_name}" WITH (FORCE)')
        shutil.rmtree(home, ignore_errors=True)
        raise
    return system


# --------------------------------------------------------------------------------------------------
# measurements around one run
# --------------------------------------------------------------------------------------------------
WORKER_ROLES = ("worker", "worker-inprocess", "worker-shell", "attune-run")


def worker_pids(system: be.System) -> list[int]:
    pids = []
    for role, sid in system.roles().items():
        if role in WORKER_ROLES:
            pids += [pid for pid in be.session_pids(sid) if "python" in be._cmdline(pid)]
    return pids


def reset_peak_rss(pids: list[int]) -> None:
    for pid in pids:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        except OSError:
            pass


def peak_rss_mib(pids: list[int]) -> float | None:
    peaks = []
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]) / 1024)
        except OSError:
            pass
    return round(max(peaks), 1) if peaks else None


def sql_counts(system: be.System) -> dict[str, int]:
    """Statements executed so far, per role (sum over the role's processes), from the probe files."""
    out: dict[str, int] = {}
    for path in glob.glob(str(system.home / "sqlcount-*.json")):
        role = Path(path).name[len("sqlcount-"):].rsplit("-", 1)[0]
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            continue
        out[role] = out.get(role, 0) + int(data.get("sql", 0))
    return out


def pg_stats(system: be.System) -> dict[str, int] | None:
    if system.mode != "production":
        return None
    rows = system._query("SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted, tup_fetched "
                         "FROM pg_stat_database WHERE datname = current_database()")
    keys = ("commits", "rollbacks", "rows_inserted", "rows_updated", "rows_deleted", "rows_fetched")
    return dict(zip(keys, rows[0])) if rows else None


class Meter:
    """CPU per role, SQL statements, PostgreSQL counters and worker peak RSS over one run."""

    def __init__(self, system: be.System) -> None:
        self.system = system

    def start(self) -> None:
        s = self.system
        self.pids = worker_pids(s)
        reset_peak_rss(self.pids)
        self.cpu0 = be.cpu_snapshot(s.roles(), s.pg_port, s.redis_port)
        self.busy0 = be.machine_busy()
        self.sql0 = sql_counts(s)
        self.pg0 = pg_stats(s)
        self.t0 = time.monotonic()

    def stop(self, units: int, unit: str) -> dict[str, Any]:
        s = self.system
        wall = time.monotonic() - self.t0
        cpu = be.cpu_delta(self.cpu0, be.cpu_snapshot(s.roles(), s.pg_port, s.redis_port))
        busy = be.machine_busy() - self.busy0
        cpu["other"] = round(max(0.0, busy - sum(cpu.values())), 3)
        out: dict[str, Any] = {
            "cpu_s": cpu,
            f"cpu_ms_per_{unit}": {k: round(v * 1000 / units, 2) for k, v in cpu.items()},
            f"cpu_total_ms_per_{unit}": round(sum(cpu.values()) * 1000 / units, 2),
            # our system's CPU (client and other processes on the machine excluded): robust to foreign load
            f"system_cpu_ms_per_{unit}": round(sum(v for k, v in cpu.items() if k not in ("client", "other"))
                                               * 1000 / units, 2),
            "busy_cores": round(busy / wall, 2) if wall > 0 else None,
            "foreign_cores_during": round(cpu["other"] / wall, 2) if wall > 0 else None,
            "worker_peak_rss_mib": peak_rss_mib(self.pids),
        }
        time.sleep(0.5)  # the probes write every 0.2 s
        sql1 = sql_counts(s)
        if sql1:
            delta = {role: sql1.get(role, 0) - self.sql0.get(role, 0) for role in sql1}
            out["sql_statements"] = delta
            out[f"sql_per_{unit}"] = round(sum(delta.values()) / units, 1)
        if self.pg0 is not None:
            time.sleep(1.2)  # PostgreSQL flushes backend statistics at most once a second
            pg1 = pg_stats(s)
            out["pg"] = {k: pg1[k] - self.pg0[k] for k in pg1}
            out[f"pg_per_{unit}"] = {k: round(v / units, 1) for k, v in out["pg"].items()
                                     if k != "rows_fetched"}
        return out


# --------------------------------------------------------------------------------------------------
# running workflows
# --------------------------------------------------------------------------------------------------
def epoch_cols(system: be.System, cols: list[str]) -> str:
    if system.mode == "production":
        return ", ".join(f"extract(epoch from {c})::float8" for c in cols)
    return ", ".join(cols)


def to_epoch(system: be.System, value: Any) -> float | None:
    return value if system.mode == "production" or value is None else be.sqlite_epoch(value)


def execution_row(system: be.System, execution_id: int) -> dict[str, Any]:
    cols = ["created", "started_at", "finished_at"]
    rows = system._query(f"SELECT status, {epoch_cols(system, cols)} FROM executions_execution "
                         f"WHERE id = {int(execution_id)}")
    if not rows:
        return {}
    return {"status": rows[0][0], **{c: to_epoch(system, v) for c, v in zip(cols, rows[0][1:])}}


def children(system: be.System, execution_id: int) -> list[tuple[str, float | None, float | None, float | None]]:
    """(status, created, finished_at, started_at) of every child, in id order."""
    cols = ["created", "finished_at", "started_at"]
    rows = system._query(f"SELECT status, {epoch_cols(system, cols)} FROM executions_execution "
                         f"WHERE parent_id = {int(execution_id)} ORDER BY id")
    return [(r[0], *(to_epoch(system, v) for v in r[1:])) for r in rows]


def run_workflow(api: be.Api, action: str, parameters: dict, timeout: float) -> dict[str, Any]:
    """POST the workflow, wait for it to end; client send time vs the row's finished_at."""
    system = api.system
    with api.client() as client:
        t0 = time.time()
        execution_id = be.Api.execute(client, action, parameters)
        posted = time.time()
        deadline = time.monotonic() + timeout
        status = ""
        while time.monotonic() < deadline:
            status = system.status_of(execution_id)
            if status in TERMINAL:
                break
            time.sleep(0.1)
            system.check_alive()
        else:
            log(f"workflow {execution_id} still {status} after {timeout:.0f} s: canceling it")
            client.post(f"/api/v1/executions/{execution_id}/cancel")
            end = time.monotonic() + 60
            while time.monotonic() < end and system.status_of(execution_id) not in TERMINAL:
                time.sleep(0.5)
    row = execution_row(system, execution_id)
    kids = children(system, execution_id)
    statuses: dict[str, int] = {}
    for st, *_ in kids:
        statuses[st] = statuses.get(st, 0) + 1
    error = None
    if row.get("status") != "succeeded":
        res = system._query(f"SELECT result FROM executions_execution WHERE id = {int(execution_id)}")
        error = str(res[0][0])[:500] if res else None
    finished = row.get("finished_at")
    timed_out = row.get("status") not in TERMINAL or status not in TERMINAL
    return {
        "execution_id": execution_id, "status": row.get("status"), "timed_out": timed_out,
        "wall_s": round(finished - t0, 3) if finished and not timed_out else None,
        "post_s": round(posted - t0, 3),
        "children": len(kids), "child_statuses": statuses, "_kids": kids, "_t0": t0, "error": error,
    }


def items_run(api: be.Api, args, n: int, action: str = "benchwf.items_noop", label: str = "noop") -> dict[str, Any]:
    system = api.system
    foreign = be.wait_idle(args.wait_idle, system)
    meter = Meter(system)
    meter.start()
    params = {"n": n} if action.endswith("_range") else {"xs": list(range(n))}
    r = run_workflow(api, action, params, timeout=args.item_timeout_base + n * args.item_timeout_per)
    r.update(meter.stop(n, "item"))
    kids = r.pop("_kids")
    t0 = r.pop("_t0")
    r.update({"items": n, "action": action, "foreign_load_before": foreign})
    ok = r["status"] == "succeeded" and r["child_statuses"].get("succeeded") == n
    r["ok"] = ok
    if r["wall_s"]:
        r["per_item_ms"] = round(r["wall_s"] * 1000 / n, 3)
        r["items_per_s"] = round(n / r["wall_s"], 1)
    firsts = [k[1] for k in kids if k[1]]
    if firsts:
        r["post_to_first_child_ms"] = round((min(firsts) - t0) * 1000, 1)
        # Rate over the middle 80 % of item completions: the steady state, without start-up and tail.
        ends = sorted(k[2] for k in kids if k[2])
        if len(ends) >= 10:
            a, b = ends[len(ends) // 10], ends[(len(ends) * 9) // 10]
            if b > a:
                r["steady_items_per_s"] = round((len(ends) * 8 // 10) / (b - a), 1)
    log(f"{label} x{n}: {r['status']} in {r['wall_s']} s  per item {r.get('per_item_ms')} ms  "
        f"({r.get('items_per_s')}/s, steady {r.get('steady_items_per_s')}/s)  children {r['child_statuses']}  "
        f"cpu/item {r.get('cpu_ms_per_item')}  sql/item {r.get('sql_per_item')}  pg/item {r.get('pg_per_item')}  "
        f"worker peak RSS {r.get('worker_peak_rss_mib')} MiB  foreign load {foreign} before, "
        f"{r.get('foreign_cores_during')} cores during")
    return r


def chain_run(api: be.Api, args) -> dict[str, Any]:
    system = api.system
    foreign = be.wait_idle(args.wait_idle, system)
    meter = Meter(system)
    meter.start()
    r = run_workflow(api, "benchwf.chain", {}, timeout=60 + args.chain * 2)
    r.update(meter.stop(args.chain, "transition"))
    kids = r.pop("_kids")
    r.pop("_t0")
    r["ok"] = r["status"] == "succeeded" and r["child_statuses"].get("succeeded") == args.chain
    r["foreign_load_before"] = foreign
    if r["wall_s"]:
        r["per_transition_ms"] = round(r["wall_s"] * 1000 / args.chain, 2)
    # conductor hop: a child finished -> the next task's child created (rows' timestamps)
    gaps = [kids[i + 1][1] - kids[i][2] for i in range(len(kids) - 1) if kids[i][2] and kids[i + 1][1]]
    child_times = [f - c for _, c, f, _ in kids if c and f]
    queue_waits = [st - c for _, c, _, st in kids if c and st]
    if gaps:
        r["hop_ms"] = {"p50": round(be.pct(gaps, 50) * 1000, 2), "p90": round(be.pct(gaps, 90) * 1000, 2),
                       "mean": round(statistics.fmean(gaps) * 1000, 2)}
    if child_times:
        r["child_created_to_finished_ms"] = {"p50": round(be.pct(child_times, 50) * 1000, 2),
                                             "mean": round(statistics.fmean(child_times) * 1000, 2)}
    if queue_waits:  # created (and scheduled, same transaction) -> claimed by a worker: commit + broker + pick-up
        r["child_created_to_started_ms"] = {"p50": round(be.pct(queue_waits, 50) * 1000, 2),
                                            "mean": round(statistics.fmean(queue_waits) * 1000, 2)}
    log(f"chain x{args.chain}: {r['status']} in {r['wall_s']} s  per transition {r.get('per_transition_ms')} ms  "
        f"(hop finished->next created {r.get('hop_ms')}; child created->finished "
        f"{r.get('child_created_to_finished_ms')}, of which created->started {r.get('child_created_to_started_ms')})  "
        f"cpu/transition {r.get('cpu_ms_per_transition')}  "
        f"sql/transition {r.get('sql_per_transition')}")
    return r


# --------------------------------------------------------------------------------------------------
# baseline: the shell action's process, spawned the worker's way, without Attune
# --------------------------------------------------------------------------------------------------
def raw_spawn(count: int, threads: int) -> float:
    """Processes/s: ``packs/core/actions/local.sh`` with ``cmd=true`` on stdin, as ProcessRunner starts it
    (own session, close_fds, stdin/stdout/stderr pipes, a minimal environment, cwd the pack)."""
    pack = ROOT / "packs" / "core"
    script = str(pack / "actions" / "local.sh")
    argv = [script] if os.access(script, os.X_OK) else ["/bin/sh", script]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": os.environ.get("LANG", "C.UTF-8"),
           "HOME": os.environ.get("HOME", "/tmp"), "ATTUNE_ACTION": "core.local", "ATTUNE_PACK": "core"}
    doc = f"cmd={shlex.quote('true')}\n".encode()

    def one() -> None:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                cwd=pack, env=env, start_new_session=True, close_fds=True)
        proc.communicate(doc)
        if proc.returncode != 0:
            raise be.BenchError(f"raw spawn of {argv} exited {proc.returncode}")

    def loop(k: int) -> None:
        for _ in range(k):
            one()

    loop(20)
    per = max(1, count // threads)
    workers = [threading.Thread(target=loop, args=(per,)) for _ in range(threads)]
    t = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return round(per * threads / (time.perf_counter() - t), 1)


# --------------------------------------------------------------------------------------------------
# one mode, end to end
# --------------------------------------------------------------------------------------------------
def bench_mode(mode: str, args) -> dict[str, Any]:
    tests = {t.strip() for t in args.tests.split(",") if t.strip()}
    result: dict[str, Any] = {"mode": mode, "code_at_start": be.code_state()}
    shell_threads = args.shell_concurrency or args.worker_concurrency
    if "shell" in tests and not args.skip_raw:
        log(f"raw spawn of local.sh cmd=true, the worker's way (system not started yet): sequential and "
            f"{shell_threads} threads")
        result["foreign_load_before_raw"] = be.wait_idle(args.wait_idle)
        seq = [raw_spawn(args.raw_n, 1) for _ in range(3)]
        par = [raw_spawn(args.raw_n, shell_threads) for _ in range(3)]
        result["raw_spawn"] = {"sequential_per_s": statistics.median(seq), "sequential_runs": seq,
                               "threads": shell_threads, "threads_per_s": statistics.median(par), "threads_runs": par}
        log(f"raw spawn: {result['raw_spawn']['sequential_per_s']}/s sequential, "
            f"{result['raw_spawn']['threads_per_s']}/s with {shell_threads} threads")
    t0 = time.monotonic()
    system = start_embedded(args) if mode == "embedded" else start_production(args)
    profiler = None
    try:
        result["startup_s"] = round(time.monotonic() - t0, 1)
        result["config"] = system.description
        log(f"{mode} up in {result['startup_s']} s: {system.description}")
        api = be.Api(system)
        api.kind = "stdlib"
        # Warm-up (imports, connections, the first ORM query compilations): not measured.
        for action, params in (("benchwf.items_noop", {"xs": list(range(20))}), ("benchwf.chain", {}),
                               ("benchwf.items_shell", {"xs": list(range(5))})):
            w = run_workflow(api, action, params, timeout=120)
            if w["status"] != "succeeded":
                raise be.BenchError(f"warm-up {action} ended {w['status']}: {w['child_statuses']} {w['error']}")
        log("warm-up done")
        if "items" in tests:
            result["items"] = {}
            for n in args.sizes:
                runs = [items_run(api, args, n) for _ in range(args.runs)]
                result["items"][str(n)] = median_run(runs, "wall_s") | {"runs": len(runs),
                                                                       "all_walls_s": [r["wall_s"] for r in runs]}
        if "range" in tests:
            result["items_range"] = {}
            for n in args.sizes:
                result["items_range"][str(n)] = items_run(api, args, n, "benchwf.items_noop_range", "noop(range)")
        if "chain" in tests:
            runs = [chain_run(api, args) for _ in range(args.chain_runs)]
            result["chain"] = median_run(runs, "wall_s") | {"runs": len(runs),
                                                           "all_walls_s": [r["wall_s"] for r in runs]}
        if "shell" in tests:
            result["shell"] = items_run(api, args, args.shell_items, "benchwf.items_shell", "shell")
        if args.profile:
            profiler = be.Profiler(Path(args.profile), args.profile_rate)
            n = args.profile_items
            log(f"profiled extra run (not counted): noop x{n} -> {args.profile}")
            profiler.start(system, f"{mode}-items{n}")
            try:
                result["profiled_items"] = items_run(api, args, n, label="noop(profiled)")
            finally:
                profiler.stop()
            profiler.start(system, f"{mode}-chain")
            try:
                result["profiled_chain"] = chain_run(api, args)
            finally:
                profiler.stop()
        result["log_bytes"] = {p.role: p.logfile.stat().st_size for p in system.procs if p.logfile.exists()}
        if args.keep_logs:
            for p in system.procs:
                dest = Path(args.keep_logs) / f"{mode}-{p.logfile.name}"
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(p.logfile, dest)
        result["code_at_end"] = be.code_state()
        if result["code_at_end"] != result["code_at_start"]:
            log(f"WARNING: application code changed during the {mode} run (the servers loaded the code of the start)")
    except BaseException:
        for p in system.procs:
            log(f"--- {p.role} log tail ---\n{be.tail(p.logfile)}")
        raise
    finally:
        if profiler is not None:
            profiler.stop()
        log(f"stopping {mode} system")
        system.stop()
        shutil.rmtree(system.home, ignore_errors=True)
    return result


def median_run(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    done = [r for r in runs if r.get(key) is not None]
    if not done:
        return dict(runs[-1])
    return dict(sorted(done, key=lambda r: r[key])[len(done) // 2])


# --------------------------------------------------------------------------------------------------
# summary
# --------------------------------------------------------------------------------------------------
def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def summarize(results: dict[str, dict[str, Any]], args) -> tuple[str, dict[str, Any]]:
    m = be.machine()
    lines = [
        "", "=" * 110,
        f"Attune workflow benchmark — {time.strftime('%Y-%m-%d %H:%M:%S')}",
        f"machine: nproc={m['nproc']}  cpu={m['cpu']}  mem={m['memory']}  kernel={m['kernel']}  "
        f"python={m['python']}  code={m['code']}",
        f"sizes={args.sizes}  with-items concurrency={args.concurrency}  chain={args.chain}  "
        f"shell items={args.shell_items}  runs={args.runs} (chain {args.chain_runs}; median)",
    ]
    if be.EXPERIMENTS:
        lines.append(f"EXPERIMENTS (settings overlays, not the shipped configuration): {', '.join(be.EXPERIMENTS)}")
    for mode, r in results.items():
        lines.append(f"{mode}: {r.get('config', '')}")
        if r.get("code_at_end") and r["code_at_end"] != r.get("code_at_start"):
            lines.append(f"{mode}: WARNING the application code changed during this run")
    lines.append("-" * 110)
    row = "{:<11} {:<50} {:>14} {:>20}  {}"
    lines.append(row.format("mode", "figure", "value", "target / baseline", "verdict"))
    lines.append("-" * 110)
    verdicts: dict[str, Any] = {}
    for mode, r in results.items():
        v: dict[str, str] = {}
        note = "" if mode == "production" else " (prod target)"
        items = r.get("items", {})
        for n, ir in items.items():
            wall = ir.get("wall_s")
            status = "" if ir.get("ok") else f"  [{ir.get('status')} {ir.get('child_statuses')}]"
            mark = ""
            if n == "10000":
                v["10k_items_s"] = mark = verdict(bool(ir.get("ok") and wall is not None and wall <= TARGET_10K_S))
            lines.append(row.format(mode, f"with-items noop x{n}: wall s (POST -> terminal)",
                                    "-" if wall is None else f"{wall:.2f}",
                                    f"<= {TARGET_10K_S:g} s{note}" if n == "10000" else "", mark) + status)
            lines.append(row.format(mode, "  per item ms / items/s (steady)",
                                    f"{ir.get('per_item_ms', '-')}",
                                    f"{ir.get('items_per_s', '-')}/s ({ir.get('steady_items_per_s', '-')}/s)", ""))
            lines.append(row.format(mode, "  system CPU ms/item; SQL/item; worker peak RSS",
                                    f"{ir.get('system_cpu_ms_per_item', '-')}",
                                    f"{ir.get('sql_per_item', '-')} sql; {ir.get('worker_peak_rss_mib', '-')} MiB",
                                    ""))
        if "1000" in items and "10000" in items:
            a, b = items["1000"].get("per_item_ms"), items["10000"].get("per_item_ms")
            ratio = round(b / a, 2) if a and b else None
            v["linear"] = verdict(ratio is not None and ratio <= TARGET_LINEAR)
            lines.append(row.format(mode, "per-item@10000 / per-item@1000", "-" if ratio is None else ratio,
                                    f"<= {TARGET_LINEAR:g}{note}", v["linear"]))
            r["linear_ratio"] = ratio
            ca, cb = items["1000"].get("system_cpu_ms_per_item"), items["10000"].get("system_cpu_ms_per_item")
            if ca and cb:
                r["linear_cpu_ratio"] = round(cb / ca, 2)
                lines.append(row.format(mode, "  same with system CPU/item (foreign load excluded)",
                                        r["linear_cpu_ratio"], f"{ca} -> {cb} ms", "(info)"))
        for n, ir in r.get("items_range", {}).items():
            lines.append(row.format(mode, f"with-items noop x{n}, items from range(): wall s",
                                    "-" if ir.get("wall_s") is None else f"{ir['wall_s']:.2f}",
                                    f"{ir.get('per_item_ms', '-')} ms/item", ""))
        ch = r.get("chain")
        if ch:
            pt = ch.get("per_transition_ms")
            v["transition"] = verdict(bool(ch.get("ok")) and pt is not None and pt <= TARGET_TRANSITION_MS)
            lines.append(row.format(mode, f"chain of {args.chain} noop: ms per transition", "-" if pt is None else pt,
                                    f"<= {TARGET_TRANSITION_MS:g} ms{note}", v["transition"]))
            lines.append(row.format(mode, "  hop child finished -> next child created p50",
                                    f"{(ch.get('hop_ms') or {}).get('p50', '-')} ms",
                                    f"child run p50 {(ch.get('child_created_to_finished_ms') or {}).get('p50', '-')} ms",
                                    ""))
            lines.append(row.format(mode, "  child created -> started (commit, broker, pick-up) p50",
                                    f"{(ch.get('child_created_to_started_ms') or {}).get('p50', '-')} ms", "", ""))
            lines.append(row.format(mode, "  system CPU ms/transition; SQL/transition",
                                    f"{ch.get('system_cpu_ms_per_transition', '-')}",
                                    f"{ch.get('sql_per_transition', '-')} sql", ""))
        sh = r.get("shell")
        raw = r.get("raw_spawn")
        if raw:
            lines.append(row.format(mode, "raw spawn local.sh cmd=true, sequential /s", raw["sequential_per_s"],
                                    "(baseline)", ""))
            lines.append(row.format(mode, f"raw spawn local.sh cmd=true, {raw['threads']} threads /s",
                                    raw["threads_per_s"], "(baseline)", ""))
        if sh:
            rate = sh.get("items_per_s")
            base = raw["threads_per_s"] if raw else None
            frac = round(rate / base, 3) if rate and base else None
            sh["fraction_of_raw"] = frac
            lines.append(row.format(mode, f"with-items core.local x{sh['items']}: items/s", rate if rate else "-",
                                    f"raw {base}/s" if base else "", "") +
                         (f"= {frac:.1%} of raw" if frac else "") +
                         ("" if sh.get("ok") else f"  [{sh.get('status')} {sh.get('child_statuses')}]"))
            lines.append(row.format(mode, "  wall s; per item ms; system CPU ms/item",
                                    "-" if sh.get("wall_s") is None else f"{sh['wall_s']:.2f}",
                                    f"{sh.get('per_item_ms', '-')} ms", f"{sh.get('system_cpu_ms_per_item', '-')}"))
        verdicts[mode] = v
    lines.append("-" * 110)
    for mode, r in results.items():
        for key, label in (("items", "with-items"), ("chain", "chain"), ("shell", "shell")):
            blocks = r.get(key)
            if not blocks:
                continue
            if key == "items":
                for n, ir in blocks.items():
                    lines.append(f"{mode} {label} x{n}: cpu ms/item {ir.get('cpu_ms_per_item')}; "
                                 f"sql {ir.get('sql_statements')}; pg/item {ir.get('pg_per_item')}")
            else:
                unit = "transition" if key == "chain" else "item"
                lines.append(f"{mode} {label}: cpu ms/{unit} {blocks.get(f'cpu_ms_per_{unit}')}; "
                             f"sql {blocks.get('sql_statements')}; pg/{unit} {blocks.get(f'pg_per_{unit}')}")
    lines.append("=" * 110)
    return "\n".join(lines), verdicts


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["embedded", "production", "both"], default="embedded")
    p.add_argument("--tests", default="items,chain,shell",
                   help="subset of items,chain,shell,range (range: with-items whose items come from range(), "
                        "not from a large parameter)")
    p.add_argument("--sizes", default="100,1000,10000", help="with-items sizes (noop)")
    p.add_argument("--concurrency", type=int, default=50, help="with-items `concurrency` of the workflows")
    p.add_argument("--chain", type=int, default=100, help="tasks in the sequential chain")
    p.add_argument("--shell-items", type=int, default=1000)
    p.add_argument("--runs", type=int, default=1, help="runs per with-items size (median reported)")
    p.add_argument("--chain-runs", type=int, default=3)
    p.add_argument("--raw-n", type=int, default=500, help="processes per raw spawn measurement")
    p.add_argument("--skip-raw", action="store_true", help="no raw spawn baseline")
    p.add_argument("--item-timeout-base", type=float, default=120.0)
    p.add_argument("--item-timeout-per", type=float, default=0.15, help="s per item added to the run time-out")
    p.add_argument("--worker-concurrency", type=int, default=8,
                   help="worker -c (production) / ATTUNE_WORKER_CONCURRENCY (embedded)")
    p.add_argument("--worker-pool", choices=["threads", "prefork", "solo"], default="threads")
    p.add_argument("--worker-layout", choices=["single", "split"], default="single",
                   help="one worker on every queue, or one for in-process queues + one for process queues")
    p.add_argument("--shell-concurrency", type=int, default=0, help="-c of the shell worker (split layout)")
    p.add_argument("--prefetch", type=int, default=4, help="ATTUNE_WORKER_PREFETCH")
    p.add_argument("--web", choices=["gunicorn", "uvicorn"], default="gunicorn")
    p.add_argument("--web-workers", type=int, default=2)
    p.add_argument("--web-threads", type=int, default=1)
    p.add_argument("--database-url", default=os.environ.get("ATTUNE_DATABASE_URL", ""),
                   help="a PostgreSQL URL whose role may CREATE DATABASE (default $ATTUNE_DATABASE_URL)")
    p.add_argument("--redis-url", default=os.environ.get("ATTUNE_REDIS_URL", ""),
                   help="Redis URL (default $ATTUNE_REDIS_URL); the database index is --redis-db")
    p.add_argument("--db-name", default="attune_benchwf",
                   help="database created (dropped first if it exists) and dropped at the end")
    p.add_argument("--redis-db", type=int, default=7, help="Redis database index, flushed before and after")
    p.add_argument("--no-count-sql", dest="count_sql", action="store_false",
                   help="do not run the worker / scheduler under the SQL statement counter")
    p.add_argument("--experiments", default="",
                   help="comma-separated settings overlays from bench/experiment_settings.py (e.g. db-reuse): "
                        "not the shipped configuration, for measuring what a change would buy")
    p.add_argument("--log-level", default="WARNING", help="ATTUNE_LOG_LEVEL of the servers")
    p.add_argument("--profile", default="", help="directory: py-spy the worker during extra runs (not counted)")
    p.add_argument("--profile-items", type=int, default=1000)
    p.add_argument("--profile-rate", type=int, default=100)
    p.add_argument("--keep-logs", default="", help="directory to copy the server logs to")
    p.add_argument("--json", default="", help="write all figures to this file")
    p.add_argument("--max-seconds", type=int, default=3600, help="hard bound for the whole script")
    p.add_argument("--wait-idle", type=float, default=30,
                   help="before each measured run, wait up to this many seconds for other work to stop")
    args = p.parse_args()
    args.sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    be.EXPERIMENTS.extend(x.strip() for x in args.experiments.split(",") if x.strip())  # read by be.base_env

    def on_alarm(*_):
        raise be.Deadline(f"--max-seconds {args.max_seconds} ran out")

    def on_term(*_):
        raise KeyboardInterrupt

    modes = ["embedded", "production"] if args.mode == "both" else [args.mode]
    if "production" in modes and not (args.database_url and args.redis_url):
        print("error: production mode needs --database-url / --redis-url (or ATTUNE_DATABASE_URL / "
              "ATTUNE_REDIS_URL): a PostgreSQL role that may CREATE DATABASE, and a Redis.", file=sys.stderr)
        return 2
    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_term)
    signal.alarm(args.max_seconds)
    results: dict[str, dict[str, Any]] = {}
    code = 0
    try:
        for mode in modes:
            results[mode] = bench_mode(mode, args)
    except (be.BenchError, be.Deadline, KeyboardInterrupt) as exc:
        log(f"aborted: {exc!r}")
        code = 1
    finally:
        signal.alarm(0)
    text, verdicts = summarize(results, args)
    print(text)
    if args.json:
        safe = dict(vars(args))
        safe["database_url"] = _redact(safe["database_url"])
        Path(args.json).write_text(json.dumps({"machine": be.machine(), "args": safe, "verdicts": verdicts,
                                               "results": results}, indent=2, default=str))
        log(f"figures written to {args.json}")
    return code


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))
    return url


if __name__ == "__main__":
    sys.exit(main())
