"""End to end: a real WebSocket client (the ``websockets`` package) against a running Attune.

Embedded mode: ``attune run`` (uvicorn + in-process worker, in-memory channel layer), one process.
Production mode: a fresh PostgreSQL database, uvicorn (web) and ``attune worker`` as two processes, so
every message from the worker reaches the web process through Redis (channels-redis pub/sub).

The scenario: a client subscribed to ``executions`` starts a shell action printing five lines with pauses,
subscribes to that execution (asking for its output from offset 0), and must see the status changes
(scheduled → running → succeeded) and the lines, in order, while the action runs, with gap-free seq
numbers; a viewer limited to another pack is refused that execution.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from django.conf import settings
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = settings.ATTUNE_MODE == "production"
ADMIN, ADMIN_PASSWORD = "ws-admin", "Ws-admin-pass-42"
LINES = [f"line{i}" for i in range(1, 6)]
CMD = "for i in 1 2 3 4 5; do echo line$i; sleep 0.6; done"
DEADLINE = 90  # seconds for the whole scenario to complete: a bound, not a measurement


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def base_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATTUNE_")}
    env.update(ATTUNE_HOME=str(home), ATTUNE_ADMIN_USER=ADMIN, ATTUNE_ADMIN_PASSWORD=ADMIN_PASSWORD,
               ATTUNE_LOG_LEVEL="WARNING", **extra)
    return env


def spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def logs(paths: list[Path]) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-4000:]}" for p in paths if p.exists())


def wait_ready(base: str, procs: list[subprocess.Popen], log_paths: list[Path], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise AssertionError("a server process exited early:\n" + logs(log_paths))
        try:
            if httpx.get(base + "/health/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError("not ready in time:\n" + logs(log_paths))


def recv(ws, deadline: float) -> dict:
    return json.loads(ws.recv(timeout=max(deadline - time.monotonic(), 0.1)))


def open_socket(port: int, query: str = ""):
    # Origin: the server's AllowedHostsOriginValidator refuses a handshake without one.
    return connect(f"ws://127.0.0.1:{port}/ws/{query}", origin=f"http://127.0.0.1:{port}", proxy=None, open_timeout=15)


def live_tail_scenario(port: int) -> None:
    base = f"http://127.0.0.1:{port}"
    api = httpx.Client(base_url=base, timeout=30)
    login = api.post("/api/v1/auth/login", json={"username": ADMIN, "password": ADMIN_PASSWORD})
    assert login.status_code == 200, login.text
    access = login.json()["access"]
    api.headers["Authorization"] = f"Bearer {access}"
    for path, body in [("/api/v1/packs", {"ref": "ops", "version": "1.0.0"}),
                       ("/api/v1/identities", {"username": "watcher", "password": "Watcher-pass-42"}),
                       ("/api/v1/permission-assignments", {"identity": "watcher", "permission_set": "viewer",
                                                           "packs": ["ops"]})]:
        created = api.post(path, json=body)
        assert created.status_code == 201, (path, created.text)
    issued = api.post("/api/v1/auth/tokens", json={"name": "ws", "user": "watcher"})
    assert issued.status_code == 201, issued.text
    watcher_token = issued.json()["token"]

    deadline = time.monotonic() + DEADLINE
    with open_socket(port, f"?token={access}") as ws:
        assert recv(ws, deadline)["type"] == "authenticated"
        ws.send(json.dumps({"subscribe": ["executions"]}))
        subscribed = recv(ws, deadline)
        assert subscribed["topics"] == ["executions"], subscribed
        executions_seq = subscribed["seq"]["executions"]

        started = api.post("/api/v1/actions/core.local/execute", json={"parameters": {"cmd": CMD}})
        assert started.status_code == 201, started.text
        execution_id = started.json()["id"]
        topic = f"execution:{execution_id}"
        ws.send(json.dumps({"subscribe": [topic], "since": {topic: {"stdout": 0}}}))

        messages: list[dict] = []
        ended: set[str] = set()
        while ended != {topic, "executions"}:  # both topics carry the final status change
            messages.append(recv(ws, deadline))
            if messages[-1].get("type") == "status" and messages[-1]["id"] == execution_id \
                    and messages[-1]["status"] == "succeeded":
                ended.add(messages[-1]["topic"])

    # --- the broad topic: every status change of the execution, in order, no gap in seq
    broad = [m for m in messages if m.get("topic") == "executions"]
    assert [m["seq"] for m in broad] == list(range(executions_seq + 1, executions_seq + 1 + len(broad)))
    assert [m["status"] for m in broad if m["id"] == execution_id] == ["scheduled", "running", "succeeded"]

    # --- the execution's own topic: subscribed, snapshot, (replayed output), then live messages
    reply = next(m for m in messages if m.get("type") == "subscribed")
    assert reply["topics"] == [topic] and reply["refused"] == []
    snapshot = next(m for m in messages if m.get("type") == "snapshot")
    assert snapshot["id"] == execution_id and snapshot["seq"] == reply["seq"][topic]
    assert snapshot["status"] in ("scheduled", "running")  # the action runs for 3 s
    own = [m for m in messages if m.get("topic") == topic and m["type"] in ("status", "output")]
    live = [m for m in own if "seq" in m and m["seq"] > snapshot["seq"]]  # lower seq: already in the snapshot
    assert [m["seq"] for m in live] == list(range(snapshot["seq"] + 1, snapshot["seq"] + 1 + len(live)))
    statuses = [m["status"] for m in live if m["type"] == "status"]
    assert statuses == ["scheduled", "running", "succeeded"][-len(statuses):] and statuses[-1] == "succeeded"

    # Output: replayed and live chunks, de-duplicated by offset, are the five lines in order...
    text, expected_offset = "", 0
    for m in (m for m in own if m["type"] == "output"):
        assert m["stream"] == "stdout"
        if m["offset"] < expected_offset:
            continue  # already had it (replay and live can overlap)
        assert m["offset"] == expected_offset, (m, text)
        text += m["data"]
        expected_offset += len(m["data"].encode())
    assert text.splitlines() == LINES
    # ... and they arrived while it ran: live chunks, several, before the succeeded status.
    order = [m["type"] for m in live]
    assert order.count("output") >= 2 and order.index("output") < order.index("status", order.index("output"))
    assert order[-1] == "status"
    final = api.get(f"/api/v1/executions/{execution_id}").json()
    assert final["status"] == "succeeded" and final["result"]["stdout"] == text

    # --- a viewer limited to pack ops is refused the core execution, and gets ops only on "executions"
    with open_socket(port) as ws:
        ws.send(json.dumps({"token": watcher_token, "subscribe": [topic, "executions"]}))
        assert recv(ws, deadline) == {"type": "authenticated", "user": "watcher", "expires_at": None}
        reply = recv(ws, deadline)
        assert reply["topics"] == ["executions:ops"], reply
        assert [r["topic"] for r in reply["refused"]] == [topic]

    # --- a bad token closes the socket with 4401
    with open_socket(port, "?token=nope") as ws:
        with pytest.raises(ConnectionClosed) as closed:
            recv(ws, deadline)
    assert closed.value.rcvd.code == 4401


@pytest.mark.embedded
@pytest.mark.timeout(240)
@pytest.mark.skipif(PRODUCTION, reason="the embedded server (one process, in-memory layer); the production run tests its own")
def test_live_tail_embedded(tmp_path):
    port = free_port()
    log = tmp_path / "attune-run.log"
    proc = spawn([sys.executable, "manage.py", "attune", "run"], base_env(tmp_path, ATTUNE_PORT=str(port)), log)
    try:
        wait_ready(f"http://127.0.0.1:{port}", [proc], [log])
        live_tail_scenario(port)
    except BaseException:
        stop([proc])
        print(logs([log]))
        raise
    stop([proc])


@pytest.mark.production
@pytest.mark.timeout(300)
@pytest.mark.skipif(not PRODUCTION, reason="needs PostgreSQL and Redis (ATTUNE_DATABASE_URL / ATTUNE_REDIS_URL)")
def test_live_tail_production_web_and_worker_processes(tmp_path):
    import psycopg
    import redis

    # CREATE / DROP DATABASE from the maintenance database (the suite's own database may not exist yet).
    admin_url = urlunsplit(urlsplit(os.environ["ATTUNE_DATABASE_URL"])._replace(path="/postgres"))
    db_name = "attune_ws_e2e_" + secrets.token_hex(4)
    db_url = urlunsplit(urlsplit(admin_url)._replace(path="/" + db_name))
    redis_url, redis_db = private_redis_db(os.environ["ATTUNE_REDIS_URL"])
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db_name}"')
    port = free_port()
    env = base_env(tmp_path, ATTUNE_DATABASE_URL=db_url, ATTUNE_REDIS_URL=redis_url,
                   ATTUNE_CHANNEL_PREFIX="attune-wstest-" + secrets.token_hex(4))
    paths = [tmp_path / "setup.log", tmp_path / "web.log", tmp_path / "worker.log"]
    procs: list[subprocess.Popen] = []
    try:
        setup = subprocess.run([sys.executable, "manage.py", "attune", "setup"], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=180)
        paths[0].write_text(setup.stdout + setup.stderr)
        assert setup.returncode == 0, logs(paths)
        procs.append(spawn([sys.executable, "-m", "uvicorn", "attune.asgi:application", "--host", "127.0.0.1",
                            "--port", str(port), "--log-level", "warning"], env, paths[1]))
        procs.append(spawn([sys.executable, "manage.py", "attune", "worker", "-c", "4", "-P", "threads"], env, paths[2]))
        wait_ready(f"http://127.0.0.1:{port}", procs, paths)
        live_tail_scenario(port)
        concurrent_webhooks_scenario(port, db_name)
    except BaseException:
        stop(procs)
        print(logs(paths))
        raise
    finally:
        stop(procs)
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        redis.Redis.from_url(redis_url).flushdb()


def concurrent_webhooks_scenario(port: int, db_name: str) -> None:
    """32 clients × 20 webhook posts at once against the ASGI web process: every one accepted (each ASGI
    request runs on its own thread; with persistent connections each left one open and PostgreSQL ran out
    of slots, failing requests with 500), and the web process holds no more connections than its pool."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import psycopg

    base = f"http://127.0.0.1:{port}"
    api = httpx.Client(base_url=base, timeout=30)
    login = api.post("/api/v1/auth/login", json={"username": ADMIN, "password": ADMIN_PASSWORD})
    api.headers["Authorization"] = f"Bearer {login.json()['access']}"
    enabled = api.post("/api/v1/triggers/core.webhook/webhook/enable", json={})
    assert enabled.status_code in (200, 201), enabled.text
    url = urlsplit(enabled.json()["url"]).path
    statuses: list[int] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        with httpx.Client(base_url=base, timeout=30) as http:
            for i in range(20):
                code = http.post(url, json={"client": n, "i": i}).status_code
                with lock:
                    statuses.append(code)

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(client, range(32)))
    assert statuses.count(202) == 640, sorted(set(statuses))
    admin_url = urlunsplit(urlsplit(os.environ["ATTUNE_DATABASE_URL"])._replace(path="/postgres"))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        held = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [db_name]).fetchone()[0]
    # the web's pool (ATTUNE_WEB_DB_POOL_SIZE, 20) plus the worker's threads and its heartbeat
    assert held <= 20 + 4 + 3, held


def private_redis_db(url: str) -> tuple[str, int]:
    """A Redis database index nobody uses (empty) other than the suite's own: the web and worker processes
    get their own broker queues there, so the suite's session worker never takes their tasks."""
    import redis

    parts = urlsplit(url)
    own = int((parts.path or "/0").strip("/") or 0)
    for index in range(15, 0, -1):
        if index == own:
            continue
        candidate = urlunsplit(parts._replace(path=f"/{index}"))
        if redis.Redis.from_url(candidate).dbsize() == 0:
            return candidate, index
    pytest.fail("no empty Redis database index for the server processes")
