"""An action flooding stdout leaves the worker's memory bounded (measured on a real server process)."""
from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.test_embedded_server import free_port, start, stop, wait_ready

pytestmark = pytest.mark.timeout(240)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_200_mb_of_output_keeps_the_worker_bounded(tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start(tmp_path, port, ATTUNE_ADMIN_PASSWORD="Flood-pass-123")
    try:
        wait_ready(base, proc)
        token = httpx.post(base + "/api/v1/auth/login", json={"username": "admin", "password": "Flood-pass-123"}).json()
        headers = {"Authorization": f"Bearer {token['access']}"}
        warm = httpx.post(base + "/api/v1/actions/core.local/execute", headers=headers,
                          json={"parameters": {"cmd": "echo warm"}}).json()
        time.sleep(1)
        Path(f"/proc/{proc.pid}/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
        before = peak_rss_mb(proc.pid)
        flood = httpx.post(base + "/api/v1/actions/core.local/execute", headers=headers, json={
            "parameters": {"cmd": "yes attune-output-line | head -c 200000000; echo end >&2"}}).json()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            stats = httpx.get(f"{base}/api/v1/executions/stats?action=core.local", headers=headers).json()
            if stats["by_status"].get("succeeded") == 2:
                break
            time.sleep(0.5)
        body = httpx.get(f"{base}/api/v1/executions/{flood['id']}", headers=headers, timeout=30).json()
        assert body["status"] == "succeeded", body["status"]
        assert body["result"]["stdout_truncated"] is True and body["result"]["stderr"] == "end\n"
        assert len(body["result"]["stdout"]) == 10 * 1024 * 1024
        growth = peak_rss_mb(proc.pid) - before
        # The bound is 10 MiB per stream; the result is held a few times over while it is stored and
        # served. 200 MB of output must not show up in the process.
        assert growth < 120, f"peak memory grew by {growth:.0f} MB for 200 MB of output"
        assert warm["id"]
    finally:
        code, out = stop(proc)
    assert code == 0, out
