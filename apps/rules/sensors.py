"""The sensor supervisor (SPEC §4): sensor processes run while an enabled rule uses one of their triggers.

What runs
    A sensor is *wanted* while it is enabled and an enabled rule uses one of its ``trigger_types`` (on an enabled
    trigger). A wanted sensor is started with its runtime (shell: the executable itself when it has a shebang,
    else ``/bin/sh``; python: the pack's interpreter; node), ``cwd`` = the pack directory, its entry point at
    ``sensors/<entry_point>``, and a minimal environment like an action's (PATH, LANG, HOME, ``ATTUNE_PACK``,
    ``ATTUNE_SENSOR``, ``ATTUNE_API_URL``, interpreter paths) plus ``ATTUNE_SENSOR_TRIGGERS``: a JSON list of
    ``{"trigger", "rule", "parameters"}`` for the active rules. When that list (or the sensor's definition, or
    the pack's content) changes, a daemon is restarted so it sees the new configuration. A sensor that is no
    longer wanted is stopped: SIGTERM to its process group, SIGKILL after ``ATTUNE_KILL_GRACE_SECONDS``.

Protocol
    One JSON object per stdout line, ``{"trigger": "<ref>", "payload": {...}}``; each becomes
    ``emit(trigger, payload, meta={"source": "sensor", "sensor": <ref>})``. A line that is not JSON, or names a
    trigger the sensor does not declare, is logged, counted and noted in the stderr tail; it is never fatal.
    The last 50 stderr lines (and the supervisor's own ``attune:`` notes) are kept in ``Sensor.last_stderr``,
    written at most once a second.

Modes
    daemon: long-running; when it exits (whatever the code) it is restarted after 1 s, 2 s, 4 s … at most 60 s;
    the back-off starts over once a run lasted 60 s. poll: started every ``poll_interval`` seconds, runs to
    completion within ``poll_interval`` seconds (60 s when unset) or is stopped; a failed run (non-zero exit,
    timeout) delays the next one by the same back-off when that is longer than the interval.

Status (``Sensor`` row, shown by ``GET /api/v1/sensors/{ref}/status`` and the admin)
    ``state`` starting / running / backoff / stopped / disabled, ``pid`` (the process group), ``host`` (the
    owning supervisor), ``restarts`` (since the supervisor took the sensor on), ``last_started_at``,
    ``last_exit_code`` (negative: killed by that signal), ``next_start_at`` (back-off or next poll),
    ``last_stderr``.

Ownership (several scheduler processes, several machines)
    A sensor is run by at most one supervisor, the one named in ``Sensor.host`` (``"<hostname>:<pid>"``), which
    holds a *lease*: ``Sensor.updated`` is its heartbeat, refreshed by the owner at least every
    ``ATTUNE_SENSOR_LEASE_SECONDS / 3`` (every status write refreshes it too). A supervisor takes a sensor with
    one conditional UPDATE ``WHERE host = '' OR host = <me> OR updated < now - ATTUNE_SENSOR_LEASE_SECONDS``
    (default 30 s), so exactly one of two racing supervisors wins. Renewal is the same conditional UPDATE: when
    it matches nothing, another supervisor took over and the local process is stopped. An owner that cannot
    reach the database for two thirds of the lease stops its processes on its own (fencing), before anyone may
    take over. Every status write is ``WHERE host = <me>``, so a former owner never overwrites the new one's
    status. Stopping a sensor that is no longer wanted, or shutting down, releases the lease (``host = ''``)
    so another supervisor can start it at once. Clocks of scheduler machines must agree to well under the
    lease (NTP), as for worker heartbeats.
    A supervisor that died without cleaning up (SIGKILL) leaves its sensor processes in their own sessions:
    they die of SIGPIPE on their next stdout write; and a supervisor taking over a stale lease on the same
    host kills the old process group when ``/proc/<pid>/environ`` proves it is that sensor.

Threads
    :class:`Supervisor` runs in the scheduler process: the tick job ``rules.sensors`` (``attune scheduler`` and
    ``attune run``) starts its thread once; the thread reconciles wanted vs running sensors every
    ``ATTUNE_SENSOR_RECONCILE_SECONDS`` (1 s; sooner when a back-off or poll is due, or a process ended).
    Reconciling is a few queries and never blocks: each run of a sensor has its own thread, which builds the
    interpreter environment (a pack virtualenv may take minutes), starts the process, reads stdout/stderr,
    emits events, enforces stop requests and poll timeouts, and records the exit. :meth:`Supervisor.stop`
    (``shutdown()``, also registered with ``atexit``) stops every sensor process and releases the leases.
"""
from __future__ import annotations

import atexit
import collections
import json
import logging
import os
import selectors
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import close_old_connections, connections, transaction
from django.db.models import F, Q
from django.utils import timezone

from apps.core.periodic import on_shutdown, register
from apps.core.processes import kill_group, pid_alive
from apps.packs.models import RuntimeKind
from apps.triggers.models import Sensor, SensorMode, SensorState
from apps.triggers.services import emit

from .models import Rule

log = logging.getLogger("attune.sensors")

READ_SIZE = 65536
MAX_LINE_BYTES = 1024 * 1024  # a longer stdout line is dropped (and counted as bad)
STDERR_LINES = 50
STDERR_LINE_CHARS = 2000
STDERR_FLUSH_SECONDS = 1.0
BAD_LINE_SNIPPET = 200
PROCESS_KINDS = frozenset({RuntimeKind.SHELL, RuntimeKind.PYTHON, RuntimeKind.NODE})
S = SensorState


def _setting(name: str, default: float) -> float:
    return float(getattr(settings, name, default))


def lease_seconds() -> float:
    return _setting("ATTUNE_SENSOR_LEASE_SECONDS", 30.0)


def kill_grace() -> float:
    return _setting("ATTUNE_SENSOR_KILL_GRACE_SECONDS", _setting("ATTUNE_KILL_GRACE_SECONDS", 5.0))


def backoff_delay(failures: int) -> float:
    """Seconds to wait before restart number ``failures`` (1, 2, 4 … capped): 1 → 1 s, 2 → 2 s, 3 → 4 s."""
    initial = _setting("ATTUNE_SENSOR_BACKOFF_INITIAL_SECONDS", 1.0)
    cap = _setting("ATTUNE_SENSOR_BACKOFF_MAX_SECONDS", 60.0)
    return min(cap, initial * (2 ** max(0, min(failures - 1, 30))))


def default_owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class SensorStartError(Exception):
    pass


# --------------------------------------------------------------------------------------------- what is wanted

@dataclass
class Plan:
    """A wanted sensor: its row (with pack and runtime), the active rules' trigger settings, a config key."""

    sensor: Sensor
    triggers: list[dict]
    key: str

    @property
    def mode(self) -> str:
        return self.sensor.mode

    @property
    def interval(self) -> float:
        return float(self.sensor.poll_interval or 60)


def wanted_sensors() -> tuple[dict[int, Plan], list[Sensor]]:
    """(plans of the sensors that should run, every sensor row)."""
    sensors = list(Sensor.objects.select_related("pack", "runner_type").prefetch_related("trigger_types"))
    trigger_ids = {t.pk for s in sensors for t in s.trigger_types.all()}
    rules: dict[int, list[tuple[str, str, dict]]] = collections.defaultdict(list)
    if trigger_ids:
        rows = (Rule.objects.filter(enabled=True, trigger_id__in=trigger_ids, trigger__enabled=True)
                .order_by("ref").values_list("trigger_id", "trigger__ref", "ref", "trigger_params"))
        for trigger_id, trigger_ref, rule_ref, params in rows:
            rules[trigger_id].append((trigger_ref, rule_ref, params))
    plans: dict[int, Plan] = {}
    for sensor in sensors:
        if not sensor.enabled:
            continue
        triggers = [{"trigger": t_ref, "rule": r_ref, "parameters": params or {}}
                    for t in sensor.trigger_types.all() for t_ref, r_ref, params in rules.get(t.pk, ())]
        if not triggers:
            continue
        triggers.sort(key=lambda item: (item["trigger"], item["rule"]))
        key = json.dumps({
            "triggers": triggers, "runner_type": sensor.runner_type_id, "entry_point": sensor.entry_point,
            "mode": sensor.mode, "poll_interval": sensor.poll_interval, "pack_path": sensor.pack.path,
            "pack_hash": sensor.pack.content_hash, "interpreter": sensor.runner_type.interpreter,
            "declared": sorted(t.ref for t in sensor.trigger_types.all()),
        }, sort_keys=True, default=str)
        plans[sensor.pk] = Plan(sensor=sensor, triggers=triggers, key=key)
    return plans, sensors


def sensor_command(plan: Plan) -> tuple[list[str], dict[str, str], Path]:
    """(argv, environment, cwd) for one run. May raise SensorStartError or EnvironmentBuildError."""
    from apps.executions.executor import interpreter_and_env, pack_directory

    sensor = plan.sensor
    pack, runtime = sensor.pack, sensor.runner_type
    if runtime.kind not in PROCESS_KINDS:
        raise SensorStartError(f"runner_type {runtime.name} ({runtime.kind}) cannot run a sensor process")
    pack_path = pack_directory(pack)
    script = pack_path / "sensors" / sensor.entry_point
    try:
        inside = script.resolve().is_relative_to(pack_path.resolve())
    except OSError:
        inside = False
    if not inside:
        raise SensorStartError(f"entry point sensors/{sensor.entry_point} is outside pack {pack.ref}")
    if not script.is_file():
        raise SensorStartError(f"entry point sensors/{sensor.entry_point} not found in pack {pack.ref} ({pack_path})")
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "ATTUNE_PACK": pack.ref,
        "ATTUNE_SENSOR": sensor.ref,
        "ATTUNE_API_URL": settings.ATTUNE_API_URL,
        "ATTUNE_SENSOR_TRIGGERS": json.dumps(plan.triggers),
    }
    interpreter = interpreter_and_env(runtime.kind, runtime, pack, pack_path, env)
    if runtime.kind == RuntimeKind.PYTHON:
        env["PYTHONUNBUFFERED"] = "1"  # one line out, one event: no block buffering on the pipe
        return [interpreter, str(script)], env, pack_path
    if runtime.kind == RuntimeKind.NODE:
        return [interpreter, str(script)], env, pack_path
    if os.access(script, os.X_OK):
        with open(script, "rb") as fh:
            if fh.read(2) == b"#!":
                return [str(script)], env, pack_path
    return [interpreter or "/bin/sh", str(script)], env, pack_path


# --------------------------------------------------------------------------------------------- process groups



def kill_orphan(previous_host: str, pid: int | None, ref: str, grace: float | None = None) -> bool:
    """Kill the process group a dead supervisor on this host left behind, if ``pid`` provably is that sensor."""
    hostname = previous_host.rpartition(":")[0]
    if not pid or hostname != socket.gethostname() or pid == os.getpid():
        return False
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if os.getpgid(pid) != pid:
            return False
    except OSError:
        return False
    if f"ATTUNE_SENSOR={ref}".encode() not in environ:
        return False
    log.warning("sensor %s: killing process group %s left by %s", ref, pid, previous_host)
    kill_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + (kill_grace() if grace is None else grace)
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.05)
    kill_group(pid, signal.SIGKILL)
    return True


# --------------------------------------------------------------------------------------------- one sensor

@dataclass
class Managed:
    """A sensor this supervisor owns (holds the lease of)."""

    sensor_id: int
    ref: str
    plan: Plan
    renewed: float  # monotonic time of the last successful lease write
    run: SensorRun | None = None
    next_start: float = 0.0  # monotonic
    failures: int = 0  # consecutive crashes, for the back-off
    retiring: str | None = None  # final state once the process is gone (stopped / disabled)
    lost: bool = False  # another supervisor took it: stop quietly
    state: str = S.STARTING
    pid: int | None = None
    orphan: tuple[str, int] | None = None  # (previous host, pid) to clean up before the first start
    events: int = 0
    bad_lines: int = 0
    tail: collections.deque = field(default_factory=lambda: collections.deque(maxlen=STDERR_LINES))
    tail_lock: threading.Lock = field(default_factory=threading.Lock)
    tail_dirty: bool = False
    tail_flushed: float = 0.0

    def note(self, line: str) -> None:
        with self.tail_lock:
            self.tail.append(line[:STDERR_LINE_CHARS])
            self.tail_dirty = True

    def tail_text(self) -> str:
        with self.tail_lock:
            self.tail_dirty = False
            return "\n".join(self.tail)

    @property
    def running(self) -> bool:
        return self.run is not None and not self.run.done


class SensorRun:
    """One process of one sensor, and the thread that starts it, reads it and records its end."""

    def __init__(self, supervisor: Supervisor, managed: Managed, plan: Plan, orphan: tuple[str, int] | None) -> None:
        self.supervisor = supervisor
        self.m = managed
        self.plan = plan
        self.key = plan.key
        self.mode = plan.mode
        self.orphan = orphan
        self.declared = {t.ref for t in plan.sensor.trigger_types.all()}
        self.pack_ref = plan.sensor.pack.ref
        self.timeout = plan.interval if self.mode == SensorMode.POLL else None
        self.started = time.monotonic()
        self.stop_reason: str | None = None  # retire / reconfigure / shutdown / lost / timeout
        self._stop = threading.Event()
        self.pid: int | None = None
        self.exit_code: int | None = None
        self.error: str | None = None  # could not start
        self.done = False
        self._bad_logged = 0
        self.thread = threading.Thread(target=self._main, name=f"attune-sensor-{managed.ref}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self._stop.set()

    # -- the thread
    def _main(self) -> None:
        try:
            proc = self._spawn()
            if proc is not None:
                self._pump(proc)
        except Exception as exc:  # a bug: record it as a failed run, the supervisor lives on
            log.exception("sensor %s: run failed", self.m.ref)
            self.error = self.error or f"{type(exc).__name__}: {exc}"
        finally:
            try:
                self.supervisor._on_exit(self)
            finally:
                connections.close_all()  # this thread's connections only

    def _spawn(self) -> subprocess.Popen | None:
        from apps.packs.environments import EnvironmentBuildError

        if self.orphan is not None:
            kill_orphan(self.orphan[0], self.orphan[1], self.m.ref)
        try:
            argv, env, cwd = sensor_command(self.plan)
        except (SensorStartError, EnvironmentBuildError) as exc:
            self.error = str(exc)
            return None
        if self._stop.is_set():
            return None
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    cwd=cwd, env=env, start_new_session=True, close_fds=True)
        except OSError as exc:
            self.error = f"could not start {argv[-1]}: {exc.strerror or exc}"
            return None
        self.pid = proc.pid
        self.started = time.monotonic()
        self.supervisor._on_started(self)
        return proc

    def _pump(self, proc: subprocess.Popen) -> None:
        grace = kill_grace()
        pgid = proc.pid  # start_new_session: the child leads its own process group
        pending = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
        skipping = {proc.stdout.fileno(): False, proc.stderr.fileno(): False}
        out_fd = proc.stdout.fileno()
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        sel.register(proc.stderr, selectors.EVENT_READ)
        term_sent: float | None = None
        killed = False
        exited_at: float | None = None
        try:
            while True:
                if sel.get_map():
                    for key, _ in sel.select(timeout=0.1):
                        chunk = os.read(key.fd, READ_SIZE)
                        if not chunk:
                            sel.unregister(key.fileobj)
                            continue
                        buf = pending[key.fd]
                        buf += chunk
                        lines, skipping[key.fd] = self._split(buf, skipping[key.fd], key.fd == out_fd)
                        for line in lines:
                            if key.fd == out_fd:
                                self._stdout_line(line)
                            else:
                                self.m.note(line.decode("utf-8", errors="replace").rstrip("\r"))
                else:
                    time.sleep(0.1)  # it closed its pipes but runs on
                now = time.monotonic()
                if exited_at is None and proc.poll() is not None:
                    exited_at = now
                if exited_at is not None:
                    if not sel.get_map():
                        break
                    if now - exited_at > 0.5:
                        # The main process is gone but something in its group still holds the pipes open.
                        kill_group(pgid, signal.SIGKILL)
                    if now - exited_at > 2.0:
                        break
                elif term_sent is None:
                    if self.timeout is not None and now - self.started >= self.timeout:
                        self.request_stop("timeout")
                    if self._stop.is_set():
                        kill_group(pgid, signal.SIGTERM)
                        term_sent = now
                if term_sent is not None and not killed and exited_at is None and now - term_sent >= grace:
                    kill_group(pgid, signal.SIGKILL)
                    killed = True
                if self.m.tail_dirty and now - self.m.tail_flushed >= STDERR_FLUSH_SECONDS:
                    self.supervisor._flush_tail(self.m)
        finally:
            sel.close()
            for pipe in (proc.stdout, proc.stderr):
                try:
                    pipe.close()
                except OSError:
                    pass
            try:
                self.exit_code = proc.wait(timeout=grace + 5)
            except subprocess.TimeoutExpired:
                kill_group(pgid, signal.SIGKILL)
                self.exit_code = proc.wait()
            kill_group(pgid, signal.SIGKILL)  # leftovers of the group: no orphans
        for fd, rest in pending.items():  # a last line without its newline
            if rest and not skipping[fd]:
                if fd == out_fd:
                    self._stdout_line(bytes(rest))
                else:
                    self.m.note(bytes(rest).decode("utf-8", errors="replace"))

    def _split(self, buf: bytearray, skipping: bool, is_stdout: bool) -> tuple[list[bytes], bool]:
        """Complete lines out of ``buf`` (kept: the unfinished rest); bounds a line's length."""
        lines: list[bytes] = []
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                break
            line = bytes(buf[:nl])
            del buf[:nl + 1]
            if skipping:
                skipping = False
                continue
            lines.append(line)
        if len(buf) > MAX_LINE_BYTES:
            if not skipping:
                if is_stdout:
                    self._bad("line longer than 1 MiB", bytes(buf[:BAD_LINE_SNIPPET]))
                else:
                    lines.append(bytes(buf[:STDERR_LINE_CHARS]))
            del buf[:]
            skipping = True
        return lines, skipping

    # -- the protocol
    def _stdout_line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", errors="replace").strip()
        if not text:
            return
        try:
            doc = json.loads(text)
        except ValueError:
            return self._bad("not JSON", text)
        if not isinstance(doc, dict) or not isinstance(doc.get("trigger"), str):
            return self._bad('not an object with a "trigger"', text)
        ref = doc["trigger"]
        if ref not in self.declared:
            if f"{self.pack_ref}.{ref}" in self.declared:
                ref = f"{self.pack_ref}.{ref}"
            else:
                return self._bad(f"trigger {ref!r} is not one this sensor declares", text)
        payload = doc.get("payload", {})
        close_old_connections()
        try:
            with transaction.atomic():
                emit(ref, payload, meta={"source": "sensor", "sensor": self.m.ref})
        except Exception as exc:
            log.exception("sensor %s: could not record an event of %s", self.m.ref, ref)
            return self._bad(f"could not record the event ({type(exc).__name__}: {exc})", text)
        self.m.events += 1

    def _bad(self, reason: str, text: str | bytes) -> None:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        self.m.bad_lines += 1
        snippet = text[:BAD_LINE_SNIPPET]
        self.m.note(f"attune: ignored stdout line ({reason}): {snippet}")
        self._bad_logged += 1
        if self._bad_logged <= 5 or self._bad_logged % 100 == 0:
            log.warning("sensor %s: ignored stdout line #%d of this run (%s): %s", self.m.ref, self._bad_logged,
                        reason, snippet)


# --------------------------------------------------------------------------------------------- the supervisor

class Supervisor:
    """Owns sensor processes in this process. ``reconcile()`` once per pass; ``start()`` runs it in a thread."""

    def __init__(self, owner_id: str | None = None) -> None:
        self.owner_id = owner_id or default_owner_id()
        self._managed: dict[int, Managed] = {}
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._halt = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self.interval = 1.0

    # -- lifecycle
    def start(self, interval: float | None = None) -> bool:
        """Start the reconciling thread (idempotent). False once stopped."""
        with self._lock:
            if self._closed:
                return False
            if self._thread is not None and self._thread.is_alive():
                return True
            self.interval = interval if interval is not None else _setting("ATTUNE_SENSOR_RECONCILE_SECONDS", 1.0)
            self._thread = threading.Thread(target=self._loop, name="attune-sensors", daemon=True)
            self._thread.start()
            atexit.register(self.stop)
            log.info("sensor supervisor %s started", self.owner_id)
            return True

    def _loop(self) -> None:
        try:
            while not self._halt.is_set():
                self._wake.clear()  # before the pass: a process ending during it wakes the next wait
                self._fence()
                close_old_connections()
                try:
                    self.reconcile()
                    wait = self._sleep_time()
                except Exception:
                    log.exception("sensor reconcile failed")
                    wait = self.interval
                self._wake.wait(wait)
        finally:
            connections.close_all()

    def _sleep_time(self) -> float:
        now = time.monotonic()
        wait = self.interval
        with self._lock:
            for m in self._managed.values():
                if not m.running and not m.retiring and not m.lost:
                    wait = min(wait, m.next_start - now)
        return max(0.02, wait)

    def stop(self, timeout: float | None = None) -> None:
        """Stop every sensor process of this supervisor, release the leases, end the thread. Idempotent."""
        with self._lock:
            already = self._closed
            self._closed = True
        self._halt.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        try:
            atexit.unregister(self.stop)
        except Exception:  # pragma: no cover
            pass
        if already and not self._managed:
            return
        runs: list[SensorRun] = []
        with self._lock:
            for m in list(self._managed.values()):
                m.retiring = m.retiring or S.STOPPED
                if m.running:
                    m.run.request_stop("shutdown")
                    runs.append(m.run)
                elif not m.lost:
                    self._release(m)
                else:
                    self._forget(m)
        deadline = time.monotonic() + (timeout if timeout is not None else kill_grace() + 5)
        for run in runs:
            run.thread.join(max(0.0, deadline - time.monotonic()))
        if runs:
            log.info("sensor supervisor %s stopped %d sensor process(es)", self.owner_id, len(runs))

    # -- reconciling
    def reconcile(self) -> dict[str, list[str]]:
        """One pass: start wanted sensors this supervisor can own, stop unwanted ones, renew leases."""
        summary: dict[str, list[str]] = {"started": [], "stopping": [], "lost": [], "claimed": []}
        with self._lock:
            if self._closed:
                return summary
            plans, sensors = wanted_sensors()
            now = timezone.now()
            mono = time.monotonic()
            lease = lease_seconds()
            stale = now - timedelta(seconds=lease)
            seen: set[int] = set()
            for sensor in sensors:
                seen.add(sensor.pk)
                plan = plans.get(sensor.pk)
                m = self._managed.get(sensor.pk)
                if m is not None and m.lost:
                    continue  # still stopping the process another supervisor now owns
                if plan is None:
                    final = S.DISABLED if not sensor.enabled else S.STOPPED
                    if m is not None:
                        if self._retire(m, final):
                            summary["stopping"].append(m.ref)
                    else:
                        self._tidy(sensor, final, stale)
                    continue
                if m is None:
                    if sensor.host not in ("", self.owner_id) and sensor.updated >= stale:
                        continue  # a live supervisor owns it
                    m = self._claim(sensor, plan, now, mono, stale)
                    if m is None:
                        continue
                    summary["claimed"].append(m.ref)
                elif sensor.host != self.owner_id or mono - m.renewed >= lease / 3:
                    if not self._renew(m, now, stale):
                        summary["lost"].append(m.ref)
                        continue
                m.plan = plan
                if m.retiring:
                    m.retiring = None  # wanted again before its process was gone: it restarts when it is
                if m.running:
                    if m.run.mode == SensorMode.DAEMON and m.run.key != plan.key and m.run.stop_reason is None:
                        log.info("sensor %s: configuration changed, restarting", m.ref)
                        m.run.request_stop("reconfigure")
                    continue
                if mono >= m.next_start:
                    self._start(m, plan)
                    summary["started"].append(m.ref)
            for sensor_id, m in list(self._managed.items()):
                if sensor_id not in seen and not m.lost:  # deleted
                    self._retire(m, None)
        return summary

    def _claim(self, sensor: Sensor, plan: Plan, now, mono: float, stale) -> Managed | None:
        claimable = Q(host="") | Q(host=self.owner_id) | Q(updated__lt=stale)
        taken = Sensor.objects.filter(pk=sensor.pk).filter(claimable).update(
            host=self.owner_id, updated=now, state=S.STARTING, pid=None, next_start_at=None, restarts=0)
        if not taken:
            return None
        m = Managed(sensor_id=sensor.pk, ref=sensor.ref, plan=plan, renewed=mono, next_start=mono)
        if sensor.host and sensor.pid and sensor.host != self.owner_id:
            m.orphan = (sensor.host, sensor.pid)
            log.info("sensor %s: taking over from %s (lease expired)", sensor.ref, sensor.host)
        self._managed[sensor.pk] = m
        return m

    def _renew(self, m: Managed, now, stale) -> bool:
        claimable = Q(host="") | Q(host=self.owner_id) | Q(updated__lt=stale)
        kept = Sensor.objects.filter(pk=m.sensor_id).filter(claimable).update(
            host=self.owner_id, updated=now, state=m.state, pid=m.pid)
        if kept:
            m.renewed = time.monotonic()
            return True
        log.warning("sensor %s: another supervisor took it over; stopping the local process", m.ref)
        self._lose(m)
        return False

    def _lose(self, m: Managed) -> None:
        m.lost = True
        if m.running:
            m.run.request_stop("lost")
        else:
            self._forget(m)

    def _fence(self) -> None:
        """Stop what we can no longer prove we own (the database was unreachable for most of the lease)."""
        limit = lease_seconds() * 2 / 3
        now = time.monotonic()
        with self._lock:
            for m in list(self._managed.values()):
                if not m.lost and now - m.renewed > limit:
                    log.warning("sensor %s: lease not renewed for %.0f s; stopping it", m.ref, now - m.renewed)
                    self._lose(m)

    def _retire(self, m: Managed, final: str | None) -> bool:
        """Stop an unwanted sensor; the lease is released once its process is gone."""
        if m.retiring is None:
            log.info("sensor %s: no longer needed, stopping", m.ref)
        m.retiring = final or S.STOPPED
        if final is None:
            m.lost = True  # the row is gone: nothing to write
        if m.running:
            m.run.request_stop("retire")
            return True
        if final is None:
            self._forget(m)
        else:
            self._release(m)
        return False

    def _tidy(self, sensor: Sensor, final: str, stale) -> None:
        """Status of an unwanted sensor nobody (alive) owns: show it stopped / disabled."""
        if sensor.state == final and not sensor.host and sensor.pid is None and sensor.next_start_at is None:
            return
        if sensor.host not in ("", self.owner_id) and sensor.updated >= stale:
            return  # its live owner is stopping it
        claimable = Q(host="") | Q(host=self.owner_id) | Q(updated__lt=stale)
        if Sensor.objects.filter(pk=sensor.pk).filter(claimable).update(
                state=final, pid=None, host="", next_start_at=None):
            if sensor.host and sensor.pid and sensor.host != self.owner_id:
                threading.Thread(target=kill_orphan, args=(sensor.host, sensor.pid, sensor.ref), daemon=True,
                                 name=f"attune-sensor-orphan-{sensor.ref}").start()

    def _start(self, m: Managed, plan: Plan) -> None:
        run = SensorRun(self, m, plan, m.orphan)
        m.orphan = None
        m.run = run
        run.start()

    # -- status writes (only while we own the row)
    def _write(self, m: Managed, **fields) -> bool | None:
        """Update our sensor row; False when it is not ours (any more), None when the database failed."""
        if m.lost:
            return False
        try:
            written = Sensor.objects.filter(pk=m.sensor_id, host=self.owner_id).update(updated=timezone.now(), **fields)
        except Exception:
            log.warning("sensor %s: could not record its status", m.ref, exc_info=True)
            return None
        if written:
            m.renewed = time.monotonic()
            m.state = fields.get("state", m.state)
            m.pid = fields.get("pid", m.pid)
        return bool(written)

    def _flush_tail(self, m: Managed) -> None:
        m.tail_flushed = time.monotonic()
        self._write(m, last_stderr=m.tail_text())

    def _release(self, m: Managed, **extra) -> None:
        self._write(m, state=m.retiring or S.STOPPED, pid=None, host="", next_start_at=None,
                    last_stderr=m.tail_text(), **extra)
        self._forget(m)

    def _forget(self, m: Managed) -> None:
        if self._managed.get(m.sensor_id) is m:
            del self._managed[m.sensor_id]

    # -- callbacks from run threads
    def _on_started(self, run: SensorRun) -> None:
        with self._lock:
            m = run.m
            next_at = timezone.now() + timedelta(seconds=run.plan.interval) if run.mode == SensorMode.POLL else None
            written = self._write(m, state=S.RUNNING, pid=run.pid, last_started_at=timezone.now(),
                                  next_start_at=next_at)
            log.info("sensor %s started (pid %s)", m.ref, run.pid)
            if written is False and not m.lost:
                log.warning("sensor %s: its row is no longer ours; stopping it", m.ref)
                self._lose(m)

    def _on_exit(self, run: SensorRun) -> None:
        with self._lock:
            try:
                self._record_exit(run)
            finally:
                run.done = True
                self._wake.set()

    def _record_exit(self, run: SensorRun) -> None:
        m = run.m
        mono = time.monotonic()
        now = timezone.now()
        elapsed = mono - run.started
        code = run.exit_code
        reason = run.stop_reason
        if run.error:
            m.note(f"attune: could not start: {run.error}")
            log.warning("sensor %s: could not start: %s", m.ref, run.error)
        if m.lost:
            self._forget(m)
            return
        if m.retiring is not None:
            if run.pid is not None:
                m.note(f"attune: stopped (exit code {code})")
            self._release(m, last_exit_code=code)
            log.info("sensor %s stopped", m.ref)
            return
        if reason in ("retire", "reconfigure"):  # wanted again / new configuration: start again now
            m.next_start = mono
            self._write(m, state=S.STARTING, pid=None, last_exit_code=code, last_stderr=m.tail_text())
            return
        daemon = run.mode == SensorMode.DAEMON
        failed = daemon or run.error is not None or code != 0 or reason == "timeout"
        if daemon and elapsed >= _setting("ATTUNE_SENSOR_BACKOFF_RESET_SECONDS", 60.0):
            m.failures = 0
        if not failed:  # a poll run that succeeded
            m.failures = 0
            m.next_start = run.started + run.plan.interval
            self._write(m, state=S.RUNNING, pid=None, last_exit_code=code,
                        next_start_at=now + timedelta(seconds=max(0.0, m.next_start - mono)),
                        **({"last_stderr": m.tail_text()} if m.tail_dirty else {}))
            return
        m.failures += 1
        delay = backoff_delay(m.failures)
        m.next_start = mono + delay
        if not daemon:
            m.next_start = max(m.next_start, run.started + run.plan.interval)
        wait = m.next_start - mono
        if reason == "timeout":
            what = f"timed out after {run.timeout:g} s (exit code {code})"
        elif run.pid is None:
            what = "did not start"
        else:
            what = f"exited with code {code} after {elapsed:.1f} s"
        m.note(f"attune: {what}; next start in {wait:.1f} s")
        log.warning("sensor %s %s; next start in %.1f s", m.ref, what, wait)
        self._write(m, state=S.BACKOFF, pid=None, last_exit_code=code, restarts=F("restarts") + 1,
                    next_start_at=now + timedelta(seconds=wait), last_stderr=m.tail_text())

    # -- introspection
    def snapshot(self) -> dict[str, dict]:
        """What this supervisor runs, with counters the database does not keep (events, bad lines)."""
        with self._lock:
            return {m.ref: {"state": m.state, "pid": m.pid, "running": m.running, "failures": m.failures,
                            "events": m.events, "bad_lines": m.bad_lines, "retiring": m.retiring, "lost": m.lost}
                    for m in self._managed.values()}


# --------------------------------------------------------------------------------------------- process-wide

_supervisor: Supervisor | None = None
_supervisor_lock = threading.Lock()


def supervisor() -> Supervisor:
    global _supervisor
    with _supervisor_lock:
        if _supervisor is None:
            _supervisor = Supervisor()
        return _supervisor


@register("rules.sensors", every=1)
def ensure_supervisor() -> str:
    """Scheduler tick: make sure this scheduler process runs the sensor supervisor."""
    if not getattr(settings, "ATTUNE_SENSORS_ENABLED", True):
        return "disabled"
    return "running" if supervisor().start() else "stopped"


@on_shutdown("rules.sensors")
def shutdown(timeout: float | None = None) -> None:
    """Stop this process's supervisor and its sensor processes (scheduler shutdown; also run at exit)."""
    with _supervisor_lock:
        current = _supervisor
    if current is not None:
        current.stop(timeout)
