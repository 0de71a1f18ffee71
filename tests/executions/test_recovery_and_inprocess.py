"""Reapers and in-process runners."""
from __future__ import annotations

import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.utils import timezone

from apps.executions import recovery, services
from apps.executions.models import Execution, Worker
from apps.executions.workers import reap_stale_workers
from tests.factories import ActionFactory, ExecutionFactory, PackFactory, WorkerFactory, runtime

from .conftest import wait_for

pytestmark = pytest.mark.timeout(60)


@pytest.mark.django_db
def test_stale_worker_is_dead_and_its_running_executions_abandoned():
    worker = WorkerFactory(last_heartbeat=timezone.now() - timedelta(minutes=5))
    alive = WorkerFactory()
    running = ExecutionFactory(status="running", worker=worker, started_at=timezone.now())
    canceling = ExecutionFactory(status="canceling", worker=worker)
    unaffected = ExecutionFactory(status="running", worker=alive)
    assert reap_stale_workers() == 1
    assert Worker.objects.get(pk=worker.pk).state == "dead"
    assert recovery.reap_abandoned() == 2
    for execution in (running, canceling):
        execution.refresh_from_db()
        assert execution.status == "abandoned" and worker.name in execution.result["error"]
    assert Execution.objects.get(pk=unaffected.pk).status == "running"
    assert recovery.reap_abandoned() == 0  # idempotent


@pytest.mark.django_db
def test_lost_scheduled_messages_are_sent_again(monkeypatch):
    sent = []
    monkeypatch.setattr(services, "dispatch", lambda execution_id, queue: sent.append((execution_id, queue)))
    old = ExecutionFactory(status="scheduled", scheduled_at=timezone.now() - timedelta(hours=1), queue="actions.shell")
    ExecutionFactory(status="scheduled", scheduled_at=timezone.now())
    assert recovery.requeue_stale() == 1
    assert sent == [(old.pk, "actions.shell")]
    assert recovery.requeue_stale() == 0  # its scheduled_at moved forward: not re-sent twice


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        status = 200 if json.loads(body).get("ok") else 503
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps({"echo": json.loads(body), "auth": self.headers.get("X-Auth")}).encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.django_db(transaction=True)
def test_http_and_noop_run_in_process(worker, http_server):
    pack = PackFactory(ref="web")
    http = ActionFactory(pack=pack, name="call", runner_type=runtime("http"), entry_point="",
                         parameters={"url": {"type": "string"}, "method": {"type": "string", "default": "GET"},
                                     "headers": {"type": "object"}, "json": {}, "timeout": {"type": "number"}})
    ok = services.create_execution(http, {"url": http_server, "method": "POST", "json": {"ok": True},
                                          "headers": {"X-Auth": "abc"}})
    done = wait_for(ok.pk, "succeeded")
    assert done.result["status_code"] == 200
    assert done.result["body"] == {"echo": {"ok": True}, "auth": "abc"}
    failing = services.create_execution(http, {"url": http_server, "method": "POST", "json": {"ok": False}})
    assert wait_for(failing.pk, "failed").result["status_code"] == 503
    unreachable = services.create_execution(http, {"url": "http://127.0.0.1:9/", "timeout": 2})
    assert "failed" in wait_for(unreachable.pk, "failed").result["error"]
    noop = ActionFactory(pack=pack, name="nothing", runner_type=runtime("noop"), entry_point="", parameters={})
    assert wait_for(services.create_execution(noop).pk, "succeeded").result == {}
