"""HTTP through the ASGI application (what ``attune run`` and uvicorn serve): Django's WSGI handler on a fixed
pool of threads, and Django's ASGI handler for bodies of unknown length (chunked)."""
from __future__ import annotations

import asyncio
import json
import threading

import pytest
from django.conf import settings

import attune.asgi as asgi_module


async def call(app, method: str, path: str, body: bytes = b"", headers=(), chunks: list[bytes] | None = None):
    """Drive one HTTP request through an ASGI app; the response status, headers and body."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}
    parts = chunks if chunks is not None else [body]
    inbox: asyncio.Queue = asyncio.Queue()
    for i, part in enumerate(parts):
        inbox.put_nowait({"type": "http.request", "body": part, "more_body": i < len(parts) - 1})
    sent: list[dict] = []

    async def receive():
        if inbox.empty():
            await asyncio.sleep(3600)  # no disconnect while the app is still answering
        return await inbox.get()

    async def send(message):
        sent.append(message)

    await asyncio.wait_for(app(scope, receive, send), timeout=30)
    start = next(m for m in sent if m["type"] == "http.response.start")
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), payload


@pytest.fixture
def thread_names(monkeypatch):
    """Record the thread every request reaching Django's WSGI handler runs on."""
    names: list[str] = []
    inner = asgi_module.django_wsgi_on_threads.app

    def recording(environ, start_response):
        names.append(threading.current_thread().name)
        return inner(environ, start_response)

    monkeypatch.setattr(asgi_module.django_wsgi_on_threads, "app", recording)
    return names


@pytest.mark.django_db(transaction=True)
def test_requests_run_on_a_fixed_pool_of_threads(thread_names):
    async def many():
        return await asyncio.gather(*(call(asgi_module.application, "GET", "/health/live") for _ in range(40)))

    results = asyncio.run(many())
    assert [status for status, _, _ in results] == [200] * 40
    assert len(thread_names) == 40
    assert all(name.startswith("WSGI") for name in thread_names), set(thread_names)
    # 40 requests, concurrent, on at most ATTUNE_WEB_THREADS threads: not a new thread per request
    assert len(set(thread_names)) <= settings.ATTUNE_WEB_THREADS < 40


@pytest.mark.django_db(transaction=True)
def test_request_body_with_content_length_reaches_the_view(thread_names):
    body = json.dumps({"username": "nobody-here", "password": "wrong-password"}).encode()
    status, _, payload = asyncio.run(call(
        asgi_module.application, "POST", "/api/v1/auth/login", body,
        headers=[("content-type", "application/json"), ("content-length", str(len(body)))]))
    # the view read the credentials (an empty body would be a 400 naming the missing fields)
    assert status == 401, payload
    assert thread_names and thread_names[0].startswith("WSGI")


@pytest.mark.django_db(transaction=True)
def test_chunked_webhook_body_is_read_whole(thread_names, admin_api):
    """A webhook posted with Transfer-Encoding: chunked (no Content-Length) keeps its whole payload: such
    requests go through Django's ASGI handler, which reads the stream to its end (the WSGI handler would
    read nothing)."""
    from apps.accounts.services import sync_builtin_sets
    from apps.packs.registrar import register_pack, shipped_pack_dirs
    from apps.packs.runtimes import sync_builtin_runtimes
    from apps.triggers.models import Event

    sync_builtin_runtimes()
    sync_builtin_sets()
    for path in shipped_pack_dirs():
        register_pack(path)
    url = admin_api.post("/api/v1/triggers/core.webhook/webhook/enable", {}, format="json").json()["url"]
    body = json.dumps({"host": "db-1", "severity": "critical", "note": "x" * 300}).encode()
    status, _, payload = asyncio.run(call(
        asgi_module.application, "POST", url,
        headers=[("content-type", "application/json"), ("transfer-encoding", "chunked")],
        chunks=[body[:10], body[10:200], body[200:]]))
    assert status == 202, payload
    assert thread_names == []  # Django's ASGI handler took it
    event = Event.objects.get(pk=json.loads(payload)["event_id"])
    assert event.payload == json.loads(body)


@pytest.mark.django_db(transaction=True)
def test_empty_login_is_rejected_naming_the_fields():
    """The counter-check of the two tests above: without credentials the answer is different."""
    status, _, payload = asyncio.run(call(
        asgi_module.application, "POST", "/api/v1/auth/login", b"{}",
        headers=[("content-type", "application/json"), ("content-length", "2")]))
    assert status == 400, payload
    assert b"username" in payload
