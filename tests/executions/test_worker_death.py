"""Killing the process that runs a long action (SIGKILL) leaves no execution running forever, and no
process behind: the next start of the embedded server marks the old worker dead, abandons its
executions and kills their process groups."""
from __future__ import annotations

import signal
import subprocess
import time

import httpx
import pytest

from tests.test_embedded_server import free_port, start, stop, wait_ready

pytestmark = pytest.mark.timeout(240)


def login(base: str) -> dict:
    token = httpx.post(base + "/api/v1/auth/login", json={"username": "admin", "password": "Kill-test-pass-1"}).json()
    return {"Authorization": f"Bearer {token['access']}"}


def test_sigkill_of_the_worker_abandons_its_execution_and_its_processes(tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    marker = str(time.time_ns())[-9:]
    proc = start(tmp_path, port, ATTUNE_ADMIN_PASSWORD="Kill-test-pass-1")
    try:
        wait_ready(base, proc)
        auth = login(base)
        created = httpx.post(base + "/api/v1/actions/core.local/execute", headers=auth,
                             json={"parameters": {"cmd": f"sleep 777.{marker}"}}).json()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            status = httpx.get(f"{base}/api/v1/executions/{created['id']}", headers=auth).json()["status"]
            if status == "running":
                break
            time.sleep(0.1)
        assert status == "running"
        time.sleep(1)  # the runner records the process group after ~0.25 s
        assert subprocess.run(["pgrep", "-f", f"777.{marker}"], capture_output=True).returncode == 0
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)

    proc = start(tmp_path, port, ATTUNE_ADMIN_PASSWORD="Kill-test-pass-1")
    try:
        wait_ready(base, proc)
        execution = httpx.get(f"{base}/api/v1/executions/{created['id']}", headers=login(base)).json()
        assert execution["status"] == "abandoned"
        assert "stopped" in execution["result"]["error"]
        time.sleep(0.5)
        assert subprocess.run(["pgrep", "-f", f"777.{marker}"], capture_output=True).returncode == 1
    finally:
        code, out = stop(proc)
    assert code == 0, out
    assert "recovered after restart" in out
