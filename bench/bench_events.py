#!/usr/bin/env python
"""Events end to end on this machine: webhook ingestion, burst completeness, webhook → running latency,
rule-matching cost with 1,000 rules on one trigger.

Reuses bench/bench_executions.py (imported, not modified) to start Attune (fresh ATTUNE_HOME; in production
mode a fresh PostgreSQL database and a private Redis index), to log in, and to read the database directly.

    apt-get install -y wrk                                   # test 1 uses wrk (keep-alive, POST via Lua)
    export ATTUNE_CI_STATE=/tmp/bench-events-state; bash .ci/services.sh start
    source /tmp/bench-events-state/env
    .venv/bin/python bench/bench_events.py --mode production [--profile /tmp/prof-events]

Tests (``--tests``, default all):
1. ``ingest``  — wrk, C connections, D seconds, POST /api/v1/webhooks/{key} (no rules): accepted (202)/s.
2. ``burst``   — one rule (core.webhook → core.noop, criterion matching every event); 10,000 webhook posts
                 from ``--burst-concurrency`` threads; then counts from the DB: events, enforcements,
                 executions succeeded; time from the first POST sent to the last execution ``finished_at``.
3. ``latency`` — sequential posts on an idle system: client send time → execution ``started_at``.
4. ``rules``   — 1,000 enabled rules on core.webhook, one matching per event (payload.host), (a) ``equals``
                 criteria (indexed by RuleIndex) and (b) ``regex`` criteria (unindexed); N events by webhook;
                 events/s = N / (first POST sent → last event ``processed_at``).
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_executions as be  # noqa: E402
import httpx  # noqa: E402

TARGET_INGEST = 500.0  # accepted webhook posts/s
TARGET_P50_MS = 100.0  # webhook POST -> execution running, idle
TARGET_MATCH = 100.0  # events/s through 1,000 rules
TRIGGER = "core.webhook"


def wait_other_bench(max_wait: float = 600) -> bool:
    """True when no bench_executions.py runs (waits up to max_wait s); False if it is still running."""
    deadline = time.monotonic() + max_wait
    while True:  # checked at least once, also with --wait-other 0
        r = subprocess.run(["pgrep", "-f", "bench_executions.py"], capture_output=True, text=True)
        if not r.stdout.strip():
            return True
        if time.monotonic() >= deadline:
            break
        be.log("bench_executions.py is running: waiting")
        time.sleep(5)
    be.log("bench_executions.py still running after the wait: measuring anyway")
    return False


class Watch:
    """Polls for bench_executions.py (and foreign CPU load) while one figure is measured."""

    def __init__(self) -> None:
        self.seen = False
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            r = subprocess.run(["pgrep", "-f", "bench_executions.py"], capture_output=True, text=True)
            if r.stdout.strip():
                self.seen = True

    def stop(self) -> bool:
        self._stop.set()
        self._t.join()
        return self.seen


class Bench:
    def __init__(self, system: be.System, args) -> None:
        self.system = system
        self.args = args
        self.api = be.Api(system)
        self.http = httpx.Client(base_url=system.url, headers=self.api.headers, timeout=60)
        self.results: dict[str, Any] = {}
        self.notes: list[str] = []

    # ---- helpers ----
    def ep(self, col: str) -> str:
        if self.system.mode == "embedded":
            return f"((julianday({col}) - 2440587.5) * 86400.0)"
        return f"extract(epoch from {col})::float8"

    def q1(self, sql: str):
        return self.system._query(sql)[0]

    def max_event_id(self) -> int:
        return self.q1("SELECT coalesce(max(id), 0) FROM triggers_event")[0]

    def before_measure(self, label: str) -> dict[str, Any]:
        other_absent = wait_other_bench(self.args.wait_other)
        load = be.wait_idle(self.args.wait_idle, self.system)
        if not other_absent:
            self.notes.append(f"{label}: measured while bench_executions.py was running")
        self.watch = Watch()
        self.watch_label = label
        return {"other_bench_absent": other_absent, "foreign_load_cores": round(load, 2)}

    def after_measure(self, env: dict) -> dict:
        seen = self.watch.stop()
        env["other_bench_seen_during"] = seen
        if seen:
            self.notes.append(f"{self.watch_label}: bench_executions.py ran during (part of) this measurement")
        return env

    def drain(self, timeout: float = 300) -> None:
        """Until no event is 'received' and no execution is active."""
        statuses = ",".join(f"'{s}'" for s in be.TERMINAL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            (ev,) = self.q1("SELECT count(*) FROM triggers_event WHERE status = 'received'")
            (ex,) = self.q1(f"SELECT count(*) FROM executions_execution WHERE status NOT IN ({statuses})")
            if ev == 0 and ex == 0:
                return
            self.system.check_alive()
            time.sleep(0.2)
        raise be.BenchError("system did not drain")

    def enable_webhook(self) -> str:
        r = self.http.post(f"/api/v1/triggers/{TRIGGER}/webhook/enable", json={})
        if r.status_code not in (200, 201):
            raise be.BenchError(f"webhook enable: HTTP {r.status_code} {r.text[:300]}")
        return r.json()["url"]

    def create_rule(self, client, name: str, criteria: dict, enabled: bool = True) -> str:
        body = {"pack": "core", "name": name, "trigger": TRIGGER, "action": "core.noop", "criteria": criteria,
                "enabled": enabled}
        r = client.post("/api/v1/rules", json=body)
        if r.status_code != 201:
            raise be.BenchError(f"create rule {name}: HTTP {r.status_code} {r.text[:300]}")
        return f"core.{name}"

    def set_rules_enabled(self, like: str, enabled: bool) -> None:
        # setup step, straight SQL; ``updated`` is bumped so the engine's per-trigger rule cache is revalidated
        now = "datetime('now')" if self.system.mode == "embedded" else "now()"
        val = ("1" if enabled else "0") if self.system.mode == "embedded" else ("true" if enabled else "false")
        if self.system.mode == "embedded":
            import sqlite3

            conn = sqlite3.connect(self.system.home / "attune.sqlite3", timeout=30)
            conn.execute(f"UPDATE rules_rule SET enabled = {val}, updated = {now} WHERE name LIKE '{like}'")
            conn.commit()
            conn.close()
        else:
            self.system.db().execute(f"UPDATE rules_rule SET enabled = {val}, updated = {now} WHERE name LIKE '{like}'")

    def post_many(self, path: str, payloads: list[dict], concurrency: int) -> dict[str, Any]:
        """POST every payload from C threads (http.client keep-alive); (first send, last response, statuses)."""
        n = len(payloads)
        statuses = [0] * n
        event_ids = [0] * n
        sends = [0.0] * n
        counter = iter(range(n))
        lock = threading.Lock()

        def run() -> None:
            with be.StdlibClient(self.system.url, {}) as client:
                while True:
                    with lock:
                        i = next(counter, None)
                    if i is None:
                        return
                    sends[i] = time.time()
                    try:
                        r = client.post(path, payloads[i])
                        statuses[i] = r.status_code
                        if r.status_code == 202:
                            event_ids[i] = r.json()["event_id"]
                    except Exception:
                        statuses[i] = -1
                        client.conn.close()

        threads = [threading.Thread(target=run) for _ in range(concurrency)]
        t0 = time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        t1 = time.time()
        accepted = sum(1 for s in statuses if s == 202)
        return {"n": n, "accepted": accepted, "other": {str(s): statuses.count(s) for s in set(statuses) if s != 202},
                "first_send": min(sends) if n else t0, "t_start": t0, "t_end": t1,
                "post_rate": round(accepted / (t1 - t0), 1), "event_ids": event_ids}

    # ---- 1: ingestion ----
    def test_ingest(self, url: str) -> None:
        lua = Path(tempfile.mkstemp(suffix=".lua", prefix="bench-events-")[1])
        lua.write_text('wrk.method = "POST"\n'
                       'wrk.body = \'{"kind": "ingest", "host": "web-1", "value": 42}\'\n'
                       'wrk.headers["Content-Type"] = "application/json"\n')
        out = {}
        for c in self.args.ingest_concurrency:
            env = self.before_measure(f"ingest c={c}")
            base = self.max_event_id()
            cmd = ["wrk", "-t", "2", "-c", str(c), "-d", f"{self.args.ingest_seconds}s", "--latency", "-s", str(lua),
                   self.system.url + url]
            be.log(" ".join(cmd))
            r = subprocess.run(cmd, capture_output=True, text=True)
            text = r.stdout
            total = int(re.search(r"(\d+) requests in", text).group(1))
            non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", text)) else 0
            rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
            errors = re.search(r"Socket errors:.*", text)
            lat = dict(re.findall(r"^\s+(50|90|99)%\s+(\S+)", text, re.M))
            env = self.after_measure(env)
            (events,) = self.q1(f"SELECT count(*) FROM triggers_event WHERE id > {base}")
            accepted_rate = rps * (total - non2xx) / total if total else 0.0
            out[c] = {"requests": total, "non_2xx": non2xx, "requests_per_s": rps,
                      "accepted_per_s": round(accepted_rate, 1), "events_in_db": events,
                      "socket_errors": errors.group(0) if errors else "", "latency": lat, **env}
            be.log(f"ingest c={c}: {out[c]}")
            self.drain()
        if self.args.profile:  # one extra, uncounted run under py-spy (web + worker)
            prof = be.Profiler(Path(self.args.profile), self.args.profile_rate)
            prof.start(self.system, "ingest-profiled")
            subprocess.run(["wrk", "-t", "2", "-c", str(self.args.ingest_concurrency[0]), "-d", "8s", "-s", str(lua),
                            self.system.url + url], capture_output=True)
            prof.stop()
            self.drain()
        lua.unlink()
        self.results["ingest"] = out

    # ---- 2: burst ----
    def test_burst(self, url: str, rule_ref: str) -> None:
        n = self.args.burst_n
        env = self.before_measure("burst")
        base = self.max_event_id()
        (rule_id,) = self.q1(f"SELECT id FROM rules_rule WHERE name = '{rule_ref.split('.', 1)[1]}'")
        payloads = [{"kind": "all", "seq": i, "host": f"burst-{i % 50}"} for i in range(n)]
        sent = self.post_many(url, payloads, self.args.burst_concurrency)
        be.log(f"burst: {sent['accepted']}/{n} accepted in {sent['t_end'] - sent['t_start']:.1f}s "
               f"({sent['post_rate']}/s) other={sent['other']}")
        deadline = time.monotonic() + self.args.burst_timeout
        while True:
            (events,) = self.q1(f"SELECT count(*) FROM triggers_event WHERE id > {base}")
            (processed,) = self.q1(f"SELECT count(*) FROM triggers_event WHERE id > {base} AND status = 'processed'")
            (enf,) = self.q1(f"SELECT count(*) FROM rules_enforcement WHERE event_id > {base} AND rule_id = {rule_id}")
            (ok,) = self.q1(f"SELECT count(*) FROM executions_execution WHERE trigger_event_id > {base} "
                            f"AND status = 'succeeded'")
            if ok >= n or time.monotonic() > deadline:
                break
            self.system.check_alive()
            time.sleep(0.5)
        env = self.after_measure(env)
        statuses = dict(self.system._query(f"SELECT status, count(*) FROM executions_execution "
                                           f"WHERE trigger_event_id > {base} GROUP BY status"))
        enf_status = dict(self.system._query(f"SELECT status, count(*) FROM rules_enforcement "
                                             f"WHERE event_id > {base} GROUP BY status"))
        last_fin, last_proc, last_created = self.q1(
            f"SELECT (SELECT max({self.ep('finished_at')}) FROM executions_execution WHERE trigger_event_id > {base}),"
            f" (SELECT max({self.ep('processed_at')}) FROM triggers_event WHERE id > {base}),"
            f" (SELECT max({self.ep('created')}) FROM triggers_event WHERE id > {base})")
        t0 = sent["first_send"]
        res = {"n": n, "concurrency": self.args.burst_concurrency, "accepted": sent["accepted"],
               "rejected": sent["other"], "post_seconds": round(sent["t_end"] - sent["t_start"], 2),
               "accepted_per_s": sent["post_rate"], "events": events, "events_processed": processed,
               "enforcements": enf, "enforcement_statuses": enf_status, "executions_succeeded": ok,
               "execution_statuses": statuses,
               "s_to_last_event_created": round(last_created - t0, 2) if last_created else None,
               "s_to_last_event_processed": round(last_proc - t0, 2) if last_proc else None,
               "s_to_all_done": round(last_fin - t0, 2) if last_fin and ok >= n else None,
               "complete": events == n and enf == n and ok == n, **env}
        be.log(f"burst: {res}")
        self.results["burst"] = res
        self.drain()

    # ---- 3: latency ----
    def test_latency(self, url: str) -> None:
        n = self.args.latency_n
        env = self.before_measure("latency")
        running, finished, processed, post_rt = [], [], [], []
        with be.StdlibClient(self.system.url, {}) as client:
            for i in range(n):
                time.sleep(0.02)
                t = time.time()
                r = client.post(url, {"kind": "all", "seq": i, "host": "lat"})
                post_rt.append((time.time() - t) * 1000)
                if r.status_code != 202:
                    raise be.BenchError(f"latency post: HTTP {r.status_code}")
                eid = r.json()["event_id"]
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    rows = self.system._query(
                        f"SELECT x.status, {self.ep('x.started_at')}, {self.ep('x.finished_at')}, "
                        f"{self.ep('e.processed_at')} FROM executions_execution x JOIN triggers_event e "
                        f"ON e.id = x.trigger_event_id WHERE x.trigger_event_id = {int(eid)}")
                    if rows and rows[0][0] in be.TERMINAL:
                        break
                    time.sleep(0.002)
                else:
                    raise be.BenchError(f"event {eid}: no finished execution within 30 s")
                status, started, fin, proc = rows[0]
                running.append((started - t) * 1000)
                finished.append((fin - t) * 1000)
                processed.append((proc - t) * 1000)

        env = self.after_measure(env)

        def summary(v: list[float]) -> dict[str, float]:
            return {"p50": round(be.pct(v, 50), 1), "p90": round(be.pct(v, 90), 1), "p99": round(be.pct(v, 99), 1),
                    "max": round(max(v), 1)}

        res = {"n": n, "post_round_trip_ms": summary(post_rt), "to_event_processed_ms": summary(processed),
               "to_running_ms": summary(running), "to_succeeded_ms": summary(finished), **env}
        be.log(f"latency: {res}")
        self.results["latency"] = res
        self.drain()

    # ---- 4: 1,000 rules ----
    def create_rules(self, prefix: str, kind: str) -> None:
        names = list(range(self.args.rules))

        def criterion(i: int) -> dict:
            if kind == "equals":
                return {"payload.host": {"type": "equals", "pattern": f"host-{i}"}}
            return {"payload.host": {"type": "regex", "pattern": f"^host-{i}$"}}

        it = iter(names)
        lock = threading.Lock()
        errors: list[str] = []

        def run() -> None:
            with httpx.Client(base_url=self.system.url, headers=self.api.headers, timeout=60) as client:
                while True:
                    with lock:
                        i = next(it, None)
                    if i is None:
                        return
                    try:
                        self.create_rule(client, f"{prefix}_{i:04d}", criterion(i))
                    except Exception as exc:
                        errors.append(str(exc))

        t = time.time()
        threads = [threading.Thread(target=run) for _ in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        if errors:
            raise be.BenchError(f"rule creation: {errors[:3]}")
        be.log(f"created {self.args.rules} {kind} rules in {time.time() - t:.1f}s")

    def match_run(self, url: str, label: str, n: int, profile: Path | None = None) -> dict[str, Any]:
        env = self.before_measure(label) if profile is None else {}
        base = self.max_event_id()
        payloads = [{"kind": "match", "seq": i, "host": f"host-{i % self.args.rules}"} for i in range(n)]
        prof = None
        if profile is not None:
            prof = be.Profiler(profile, self.args.profile_rate)
            prof.start(self.system, label)
        sent = self.post_many(url, payloads, self.args.burst_concurrency)
        deadline = time.monotonic() + self.args.burst_timeout
        while time.monotonic() < deadline:
            (left,) = self.q1(f"SELECT count(*) FROM triggers_event WHERE id > {base} AND status = 'received'")
            if left == 0:
                break
            self.system.check_alive()
            time.sleep(0.2)
        if prof:
            prof.stop()
        if env:
            env = self.after_measure(env)
        (processed, last_proc) = self.q1(f"SELECT count(*), max({self.ep('processed_at')}) FROM triggers_event "
                                         f"WHERE id > {base} AND status = 'processed'")
        (enf,) = self.q1(f"SELECT count(*) FROM rules_enforcement WHERE event_id > {base}")
        secs = last_proc - sent["first_send"]
        res = {"events": n, "accepted": sent["accepted"], "post_per_s": sent["post_rate"], "processed": processed,
               "enforcements": enf, "seconds": round(secs, 2), "events_per_s": round(processed / secs, 1), **env}
        be.log(f"{label}: {res}")
        self.drain()
        return res

    def test_rules(self, url: str) -> None:
        out = {}
        for case, kind in (("a_equals", "equals"), ("b_regex", "regex")):
            prefix = f"m{kind[:2]}"
            self.create_rules(prefix, kind)
            # warm the rule cache / code paths with a few events (not counted)
            if self.args.match_warmup:
                self.match_run(url, f"rules {case} warm-up", self.args.match_warmup, profile=None)
            out[case] = self.match_run(url, f"rules {case}", self.args.match_n)
            if self.args.profile:
                self.match_run(url, f"rules-{case}-profiled", self.args.profile_n, profile=Path(self.args.profile))
            self.set_rules_enabled(f"{prefix}_%", False)
        self.results["rules"] = out


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def summarize(b: Bench, mode: str) -> str:
    r = b.results
    lines = [f"# bench_events — {mode}", f"machine: {json.dumps(be.machine())}", f"system: {b.system.description}", ""]
    for c, v in (r.get("ingest") or {}).items():
        lines.append(f"(1) webhook ingestion wrk c={c}: {v['accepted_per_s']} accepted/s (target >= {TARGET_INGEST})"
                     f" {verdict(v['accepted_per_s'] >= TARGET_INGEST)}; non-2xx {v['non_2xx']}, "
                     f"latency {v['latency']}, events in DB {v['events_in_db']}/{v['requests']}")
    if (v := r.get("burst")):
        lines.append(f"(2) burst {v['n']}: {v['accepted']} accepted at {v['accepted_per_s']}/s; events {v['events']}, "
                     f"enforcements {v['enforcements']}, executions succeeded {v['executions_succeeded']} "
                     f"-> {'complete' if v['complete'] else 'INCOMPLETE'} {verdict(v['complete'])}; all done after "
                     f"{v['s_to_all_done']} s (events processed after {v['s_to_last_event_processed']} s)")
    if (v := r.get("latency")):
        lines.append(f"(3) webhook POST -> running: p50 {v['to_running_ms']['p50']} ms (target <= {TARGET_P50_MS}) "
                     f"{verdict(v['to_running_ms']['p50'] <= TARGET_P50_MS)}, p99 {v['to_running_ms']['p99']} ms")
    for case, v in (r.get("rules") or {}).items():
        lines.append(f"(4{case[0]}) 1,000 rules {case[2:]}: {v['events_per_s']} events/s (target >= {TARGET_MATCH})"
                     f" {verdict(v['events_per_s'] >= TARGET_MATCH)}; {v['processed']}/{v['events']} processed, "
                     f"{v['enforcements']} enforcements")
    lines += [f"note: {n}" for n in b.notes]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["embedded", "production"], default="production")
    p.add_argument("--tests", default="ingest,burst,latency,rules")
    p.add_argument("--ingest-concurrency", default="8,32", help="wrk -c values")
    p.add_argument("--ingest-seconds", type=int, default=10)
    p.add_argument("--burst-n", type=int, default=10000)
    p.add_argument("--burst-concurrency", type=int, default=8)
    p.add_argument("--burst-timeout", type=float, default=400)
    p.add_argument("--latency-n", type=int, default=200)
    p.add_argument("--rules", type=int, default=1000)
    p.add_argument("--match-n", type=int, default=2000)
    p.add_argument("--match-warmup", type=int, default=50)
    p.add_argument("--profile", default="", help="directory: py-spy an extra (uncounted) run of each rules case")
    p.add_argument("--profile-n", type=int, default=500)
    p.add_argument("--profile-rate", type=int, default=100)
    p.add_argument("--wait-other", type=float, default=600, help="wait for bench_executions.py to finish (s)")
    p.add_argument("--wait-idle", type=float, default=30)
    p.add_argument("--json", default="")
    # the fields bench_executions.start_* read (its defaults)
    p.add_argument("--embedded-concurrency", type=int, default=8)
    p.add_argument("--web", choices=["gunicorn", "uvicorn"], default="gunicorn")
    p.add_argument("--web-workers", type=int, default=2)
    p.add_argument("--web-threads", type=int, default=1)
    p.add_argument("--worker-layout", choices=["single", "split"], default="single")
    p.add_argument("--worker-pool", choices=["threads", "prefork", "solo"], default="threads")
    p.add_argument("--worker-concurrency", type=int, default=8)
    p.add_argument("--shell-concurrency", type=int, default=0)
    p.add_argument("--prefetch", type=int, default=4)
    p.add_argument("--log-level", default="")
    args = p.parse_args()
    args.ingest_concurrency = [int(x) for x in args.ingest_concurrency.split(",") if x]
    tests = set(args.tests.split(","))
    import signal

    def on_term(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)  # stop the system under test on SIGTERM too
    wait_other_bench(args.wait_other)
    system = be.start_embedded(args) if args.mode == "embedded" else be.start_production(args)
    bench = None
    try:
        bench = Bench(system, args)
        url = bench.enable_webhook()
        if "ingest" in tests:
            bench.test_ingest(url)
        if tests & {"burst", "latency"}:
            rule = bench.create_rule(bench.http, "bench_all", {"payload.kind": {"type": "equals", "pattern": "all"}})
            if "burst" in tests:
                bench.test_burst(url, rule)
            if "latency" in tests:
                bench.test_latency(url)
            bench.set_rules_enabled("bench_all", False)
        if "rules" in tests:
            bench.test_rules(url)
    except (be.BenchError, KeyboardInterrupt) as exc:
        be.log(f"aborted: {exc!r}")
    finally:
        if bench is not None:
            print(summarize(bench, args.mode))
            if args.json:
                Path(args.json).write_text(json.dumps({"machine": be.machine(), "args": vars(args),
                                                       "system": system.description, "results": bench.results,
                                                       "notes": bench.notes}, indent=2, default=str))
        system.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
