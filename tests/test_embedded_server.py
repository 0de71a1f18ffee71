"""`attune run` as a newcomer uses it: one process serving everything, a clean stop on SIGTERM/SIGINT.

The server always runs in embedded mode here (its own ATTUNE_HOME), whichever mode the suite runs in.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(home: Path, port: int, **env_extra) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATTUNE_")}
    env.update(ATTUNE_HOME=str(home), ATTUNE_PORT=str(port), **env_extra)
    return subprocess.Popen(
        [sys.executable, "manage.py", "attune", "run"], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError("server exited early:\n" + proc.stdout.read())
        try:
            if httpx.get(base + "/health/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise AssertionError("server not ready in time:\n" + proc.stdout.read())


def stop(proc: subprocess.Popen, sig=signal.SIGTERM) -> tuple[int, str]:
    proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError("server did not stop within 30 s:\n" + out) from None
    return proc.returncode, out


@pytest.mark.timeout(240)
def test_run_serves_everything_and_stops_cleanly(tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start(tmp_path, port, ATTUNE_ADMIN_USER="ops-admin", ATTUNE_ADMIN_PASSWORD="Newcomer-pass-42")
    try:
        wait_ready(base, proc)
        assert httpx.get(base + "/admin/login/").status_code == 200
        assert httpx.get(base + "/docs/").status_code == 200
        assert httpx.get(base + "/api/schema/").status_code == 200
        assert httpx.get(base + "/api/v1/packs").status_code == 401
        login = httpx.post(base + "/api/v1/auth/login", json={"username": "ops-admin", "password": "Newcomer-pass-42"})
        assert login.status_code == 200
        tokens = login.json()
        assert set(tokens) == {"access", "refresh"}
        auth = {"Authorization": f"Bearer {tokens['access']}"}
        created = httpx.post(base + "/api/v1/packs", json={"ref": "ops", "version": "1.0.0"}, headers=auth)
        assert created.status_code == 201, created.text
        page = httpx.get(base + "/api/v1/packs?page_size=1", headers=auth).json()
        assert page["count"] == 3 and len(page["results"]) == 1 and page["next"]  # core, examples (shipped) + ops
        bad = httpx.post(base + "/api/v1/packs", json={"ref": "Bad Ref", "version": "1.0.0"}, headers=auth)
        assert bad.status_code == 400 and "ref" in bad.json()
        details = httpx.get(base + "/health/").json()
        assert details["mode"] == "embedded" and details["checks"]["workers"]["online"] == 1
        assert httpx.get(base + "/api/v1/actions/core.echo", headers=auth).json()["runner_type"] == "shell"
    finally:
        code, out = stop(proc)
    assert code == 0, out
    assert "stopped" in out
    assert (tmp_path / "attune.sqlite3").exists()


@pytest.mark.timeout(240)
def test_second_run_reuses_state_and_generated_credentials_are_printed(tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start(tmp_path, port)
    wait_ready(base, proc)
    code, out = stop(proc, signal.SIGINT)
    assert code == 0, out
    assert "created admin user 'admin' with generated password:" in out
    password = out.split("generated password:", 1)[1].split()[0]
    assert (tmp_path / "admin-credentials.txt").read_text().strip().endswith(password)

    proc = start(tmp_path, port)
    wait_ready(base, proc)
    try:
        login = httpx.post(base + "/api/v1/auth/login", json={"username": "admin", "password": password})
        assert login.status_code == 200
    finally:
        code, out = stop(proc)
    assert code == 0
    assert "admin user 'admin' exists" in out and "generated password" not in out
