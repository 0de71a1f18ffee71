"""The sensor supervisor (SPEC §4) with real sensor processes: daemon and poll modes, the stdout protocol,
crash back-off, stop when no rule needs the sensor, and one owner per sensor across supervisors."""
from __future__ import annotations

import itertools
import os
import textwrap
import time
from pathlib import Path

import pytest

from apps.packs.registrar import register_pack, shipped_pack_dirs
from apps.rules.models import Enforcement
from apps.rules.sensors import Supervisor, backoff_delay
from apps.triggers.models import Event, Sensor
from tests.executions.conftest import wait_for

pytestmark = [pytest.mark.timeout(60), pytest.mark.django_db(transaction=True)]


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())


def wait_until(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def sensor(ref: str) -> Sensor:
    return Sensor.objects.get(ref=ref)


@pytest.fixture
def sensorpack(tmp_path, worker):
    from apps.accounts.services import sync_builtin_sets
    from apps.packs.runtimes import sync_builtin_runtimes

    sync_builtin_runtimes()
    sync_builtin_sets()
    for path in shipped_pack_dirs():
        register_pack(path)
    root = tmp_path / "sensorpack"
    write(root, "pack.yaml", "ref: sensorpack\nversion: 1.0.0\n")
    for name in ("tick", "crash", "polled", "hung", "plain"):
        write(root, f"triggers/{name}.yaml", f"name: {name}\npayload_schema: {{type: object}}\n")
    write(root, "sensors/ticker.yaml", """
        name: ticker
        runner_type: python
        entry_point: ticker.py
        trigger_types: [sensorpack.tick]
        mode: daemon
    """)
    write(root, "sensors/ticker.py", """
        import json, os, sys, time
        active = json.loads(os.environ["ATTUNE_SENSOR_TRIGGERS"])
        greeting = active[0]["parameters"].get("greeting", "?")
        print("this is not JSON")
        print(json.dumps({"trigger": "otherpack.nope", "payload": {}}))
        n = 0
        while True:  # no flush: the supervisor makes python unbuffered
            n += 1
            print(json.dumps({"trigger": "sensorpack.tick",
                              "payload": {"n": n, "greeting": greeting, "rule": active[0]["rule"]}}))
            sys.stderr.write(f"tick {n}\\n")
            time.sleep(0.2)
    """)
    write(root, "sensors/crasher.yaml", """
        name: crasher
        runner_type: shell
        entry_point: crash.sh
        trigger_types: [sensorpack.crash]
    """)
    write(root, "sensors/crash.sh", """
        date +%s.%N >> starts.log
        echo "boom from $ATTUNE_SENSOR in $(pwd)" >&2
        exit 3
    """)
    write(root, "sensors/poller.yaml", """
        name: poller
        runner_type: python
        entry_point: poller.py
        trigger_types: [sensorpack.polled]
        mode: poll
        poll_interval: 1
    """)
    write(root, "sensors/poller.py", """
        import json, os, time
        print("garbage line")
        print(json.dumps({"trigger": "polled", "payload": {"pid": os.getpid(), "at": time.time()}}))
    """)
    write(root, "sensors/hanger.yaml", """
        name: hanger
        runner_type: shell
        entry_point: hang.sh
        trigger_types: [sensorpack.hung]
        mode: poll
        poll_interval: 1
    """)
    write(root, "sensors/hang.sh", """
        echo '{"trigger": "sensorpack.hung", "payload": {"started": true}}'
        sleep 30
    """)
    write(root, "sensors/plain.yaml", """
        name: plain
        runner_type: shell
        entry_point: plain.sh
        trigger_types: [sensorpack.plain]
    """)
    write(root, "sensors/plain.sh", """
        while true; do sleep 0.1; done
    """)
    register_pack(root)
    return root


@pytest.fixture
def supervisors():
    made: list[Supervisor] = []

    def make(owner_id: str | None = None) -> Supervisor:
        made.append(Supervisor(owner_id))
        return made[-1]

    yield make
    for sup in made:
        sup.stop(timeout=10)


def make_rule(admin_api, name: str, trigger: str, action: str = "core.noop", **extra) -> dict:
    body = {"pack": "sensorpack", "name": name, "trigger": trigger, "action": action, **extra}
    response = admin_api.post("/api/v1/rules", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def test_backoff_doubles_from_one_second_up_to_a_minute():
    assert [backoff_delay(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]


def test_daemon_sensor_feeds_rules_restarts_on_new_settings_and_stops_with_its_rule(
        admin_api, sensorpack, supervisors):
    sup = supervisors()
    make_rule(admin_api, "greet", "sensorpack.tick", action="core.echo", trigger_params={"greeting": "hello"},
              criteria={"payload.n": {"type": "lessthan", "pattern": 3}},
              action_params={"message": "{{ payload.greeting }} {{ payload.n }}"})
    assert sensor("sensorpack.crasher").state == "stopped"  # no rule uses it: never started
    sup.start(interval=0.2)

    wait_until(lambda: Event.objects.filter(trigger_ref="sensorpack.tick").count() >= 4, what="sensor events")
    row = sensor("sensorpack.ticker")
    assert row.state == "running" and row.host == sup.owner_id and row.last_started_at is not None
    pid = row.pid
    assert pid and alive(pid)
    first = Event.objects.filter(trigger_ref="sensorpack.tick").order_by("id").first()
    assert first.payload == {"n": 1, "greeting": "hello", "rule": "sensorpack.greet"}
    assert first.meta == {"source": "sensor", "sensor": "sensorpack.ticker"}

    # Events are matched and run the rule's action.
    enforcement = wait_until(lambda: Enforcement.objects.filter(event=first, execution__isnull=False).first(),
                             what="enforcement")
    assert wait_for(enforcement.execution_id, "succeeded").result["stdout"] == "hello 1\n"

    # The two bad lines were counted, not fatal; stderr and the supervisor's notes reach the status API.
    snapshot = sup.snapshot()["sensorpack.ticker"]
    assert snapshot["bad_lines"] == 2 and snapshot["events"] >= 4
    status = wait_until(lambda: (lambda s: s if "tick 3" in s["stderr_tail"] else None)(
        admin_api.get("/api/v1/sensors/sensorpack.ticker/status").json()), what="stderr in status")
    assert status["running"] is True and status["state"] == "running" and status["pid"] == pid
    assert "attune: ignored stdout line (not JSON): this is not JSON" in status["stderr_tail"]
    assert "'otherpack.nope' is not one this sensor declares" in status["stderr_tail"]
    assert status["restarts"] == 0 and alive(pid)

    # New trigger parameters: the daemon is restarted with the new ATTUNE_SENSOR_TRIGGERS (not a crash).
    patched = admin_api.patch("/api/v1/rules/sensorpack.greet", {"trigger_params": {"greeting": "bonjour"}},
                              format="json")
    assert patched.status_code == 200, patched.content
    wait_until(lambda: Event.objects.filter(trigger_ref="sensorpack.tick", payload__greeting="bonjour").exists(),
               what="events with the new settings")
    row = sensor("sensorpack.ticker")
    assert row.pid != pid and not alive(pid) and row.restarts == 0 and row.state == "running"
    pid = row.pid

    # Disabling the only rule stops the process.
    assert admin_api.post("/api/v1/rules/sensorpack.greet/disable").status_code == 200
    wait_until(lambda: not alive(pid), what="the sensor process to end")
    row = wait_until(lambda: (lambda r: r if r.state == "stopped" else None)(sensor("sensorpack.ticker")),
                     what="stopped state")
    assert row.pid is None and row.host == "" and row.last_exit_code == -15
    assert sup.snapshot() == {}

    # A disabled sensor does not run even when a rule needs it.
    assert admin_api.post("/api/v1/sensors/sensorpack.ticker/disable").status_code == 200
    assert admin_api.post("/api/v1/rules/sensorpack.greet/enable").status_code == 200
    wait_until(lambda: sensor("sensorpack.ticker").state == "disabled", what="disabled state")
    time.sleep(0.5)
    assert sup.snapshot() == {} and sensor("sensorpack.ticker").pid is None


def test_crashing_sensor_restarts_with_growing_backoff(admin_api, sensorpack, supervisors, settings):
    settings.ATTUNE_SENSOR_BACKOFF_INITIAL_SECONDS = 0.8  # 0.8, 1.6, 3.2 s … (1, 2, 4 s by default)
    sup = supervisors()
    make_rule(admin_api, "on_crash", "sensorpack.crash")
    sup.start(interval=0.2)

    row = wait_until(lambda: (lambda r: r if r.restarts >= 4 else None)(sensor("sensorpack.crasher")),
                     timeout=30, what="four restarts")
    starts = [float(x) for x in (sensorpack / "starts.log").read_text().split()]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(gaps) >= 3
    # Start-to-start gaps are back-off plus the crash's own run time (process start, noisy under load): the
    # back-off doubles, so each gap grows by about the previous back-off (0.8 s, then 1.6 s).
    assert gaps[0] >= 0.75 and gaps[1] - gaps[0] > 0.5 and gaps[2] - gaps[1] > 1.1, gaps
    assert row.last_exit_code == 3 and row.host == sup.owner_id

    status = admin_api.get("/api/v1/sensors/sensorpack.crasher/status").json()
    assert f"boom from sensorpack.crasher in {sensorpack}" in status["stderr_tail"]
    assert "attune: exited with code 3" in status["stderr_tail"]
    assert status["restarts"] >= 4 and status["last_exit_code"] == 3
    assert status["state"] in ("backoff", "running")
    if status["state"] == "backoff":
        assert status["next_start_at"] is not None and status["running"] is False

    # No longer needed while in back-off: released, shown stopped, not restarted.
    assert admin_api.post("/api/v1/rules/sensorpack.on_crash/disable").status_code == 200
    wait_until(lambda: sensor("sensorpack.crasher").state == "stopped", what="stopped state")
    count = len((sensorpack / "starts.log").read_text().split())
    time.sleep(1.2)
    assert len((sensorpack / "starts.log").read_text().split()) == count
    assert sensor("sensorpack.crasher").host == ""


def test_poll_sensor_runs_every_interval_and_is_stopped_at_its_timeout(admin_api, sensorpack, supervisors):
    sup = supervisors()
    make_rule(admin_api, "on_poll", "sensorpack.polled")
    make_rule(admin_api, "on_hung", "sensorpack.hung")
    sup.start(interval=0.2)

    events = wait_until(lambda: (lambda e: e if len(e) >= 3 else None)(
        list(Event.objects.filter(trigger_ref="sensorpack.polled").order_by("id"))), timeout=10,
        what="three polls")
    assert len({e.payload["pid"] for e in events}) == len(events)  # one process per poll
    times = [e.payload["at"] for e in events]
    assert all(0.8 <= b - a <= 1.8 for a, b in itertools.pairwise(times)), times
    assert all(e.meta["sensor"] == "sensorpack.poller" for e in events)
    assert sup.snapshot()["sensorpack.poller"]["bad_lines"] >= 3
    row = sensor("sensorpack.poller")
    assert row.state == "running" and row.last_exit_code == 0 and row.restarts == 0
    assert row.next_start_at is not None

    # A poll run that outlives its interval is stopped; its event still counts; the failure is visible.
    hung = wait_until(lambda: (lambda r: r if r.last_exit_code is not None else None)(sensor("sensorpack.hanger")),
                      what="the hung poll to be stopped")
    assert hung.last_exit_code == -15 and hung.restarts >= 1
    assert hung.state in ("backoff", "running")  # waiting, or already polling again
    assert "timed out after 1 s" in hung.last_stderr
    assert Event.objects.filter(trigger_ref="sensorpack.hung").exists()

    # Shutting the supervisor down stops everything and releases the sensors.
    sup.stop()
    for ref in ("sensorpack.poller", "sensorpack.hanger"):
        row = sensor(ref)
        assert (row.state, row.host, row.pid) == ("stopped", "", None), ref


def test_one_owner_per_sensor_and_takeover_after_the_lease_expires(admin_api, sensorpack, supervisors, settings):
    settings.ATTUNE_SENSOR_LEASE_SECONDS = 1.5
    a, b = supervisors("host-a:1"), supervisors("host-b:2")
    make_rule(admin_api, "on_plain", "sensorpack.plain")

    assert a.reconcile()["started"] == ["sensorpack.plain"]
    pid_a = wait_until(lambda: sensor("sensorpack.plain").pid, what="a's process")
    assert b.reconcile() == {"started": [], "stopping": [], "lost": [], "claimed": []}
    assert b.snapshot() == {} and sensor("sensorpack.plain").host == "host-a:1"

    # a stops renewing (hung, or its machine is gone): once the lease is stale, b takes the sensor over …
    time.sleep(1.7)
    assert b.reconcile()["claimed"] == ["sensorpack.plain"]
    pid_b = wait_until(lambda: (lambda r: r.pid if r.pid and r.pid != pid_a else None)(sensor("sensorpack.plain")),
                       what="b's process")
    row = sensor("sensorpack.plain")
    assert row.host == "host-b:2" and row.state == "running" and alive(pid_b)
    # … and a, when it wakes up, sees it lost the sensor and stops its own process without touching the row.
    assert a.reconcile()["lost"] == ["sensorpack.plain"]
    wait_until(lambda: not alive(pid_a), what="a's process to end")
    wait_until(lambda: a.snapshot() == {}, what="a to forget the sensor")
    assert sensor("sensorpack.plain").host == "host-b:2" and sensor("sensorpack.plain").pid == pid_b

    # A clean shutdown releases the lease at once: the other supervisor can take it without waiting.
    b.stop()
    assert not alive(pid_b) and sensor("sensorpack.plain").host == ""
    assert a.reconcile()["claimed"] == ["sensorpack.plain"]
    wait_until(lambda: sensor("sensorpack.plain").pid, what="a's new process")
