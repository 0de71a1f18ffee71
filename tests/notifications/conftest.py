"""WebSocket tests: users with tokens, executions in two packs, a fresh notifications layer per test."""
from __future__ import annotations

import asyncio
import json
from urllib.parse import unquote, urlparse

import pytest
from asgiref.sync import sync_to_async
from asgiref.testing import ApplicationCommunicator
from channels.layers import InMemoryChannelLayer, channel_layers
from django.db import connections
from rest_framework_simplejwt.tokens import AccessToken

from apps.accounts.models import ApiToken, PermissionAssignment, PermissionSet
from apps.accounts.services import sync_builtin_sets
from apps.notifications import transport
from apps.packs.runtimes import sync_builtin_runtimes
from attune.asgi import application
from tests.factories import ActionFactory, ExecutionFactory, PackFactory, UserFactory

RECEIVE_TIMEOUT = 10  # seconds: an upper bound for a message that must come, never a measured duration


class WebsocketCommunicator(ApplicationCommunicator):
    """channels.testing.WebsocketCommunicator, which cannot be imported without daphne (not a dependency
    of Attune): the same scope and shortcuts. Tests using it are transactional, so the consumer's database
    threads close their connections as in production."""

    def __init__(self, app, path: str, headers=None) -> None:
        parsed = urlparse(path)
        scope = {"type": "websocket", "path": unquote(parsed.path), "query_string": parsed.query.encode(),
                 "headers": headers or [], "subprotocols": []}
        super().__init__(app, scope)

    async def connect(self) -> tuple[bool, object]:
        await self.send_input({"type": "websocket.connect"})
        response = await self.receive_output(RECEIVE_TIMEOUT)
        if response["type"] == "websocket.close":
            return False, response.get("code", 1000)
        assert response["type"] == "websocket.accept", response
        return True, response.get("subprotocol")

    async def send_to(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data is not None:
            await self.send_input({"type": "websocket.receive", "text": text_data})
        else:
            await self.send_input({"type": "websocket.receive", "bytes": bytes_data})

    async def send_json_to(self, data) -> None:
        await self.send_to(text_data=json.dumps(data))

    async def receive_from(self, timeout: float = RECEIVE_TIMEOUT) -> str:
        response = await self.receive_output(timeout)
        assert response["type"] == "websocket.send", response
        return response["text"]

    async def disconnect(self, code: int = 1000) -> None:
        await self.send_input({"type": "websocket.disconnect", "code": code})
        await self.wait(RECEIVE_TIMEOUT)


@pytest.fixture(autouse=True)
def fresh_layer():
    """A new notifications layer per test (an in-memory one keeps queues bound to the previous test's loop)."""
    if transport._redis_settings() is None:
        channel_layers.set(transport.ALIAS, InMemoryChannelLayer())
    else:
        channel_layers.backends.pop(transport.ALIAS, None)
    yield
    channel_layers.backends.pop(transport.ALIAS, None)


@pytest.fixture
def world(transactional_db):
    """Two packs (core-ish ``alpha`` and ``beta``), an execution in each, and identities:
    ``admin`` (superuser), ``operator`` (every pack), ``beta_viewer`` (viewer limited to pack beta)."""
    sync_builtin_runtimes()
    sync_builtin_sets()
    alpha, beta = PackFactory(ref="alpha"), PackFactory(ref="beta")
    users = {
        "admin": UserFactory(username="admin", is_staff=True, is_superuser=True),
        "operator": UserFactory(username="operator"),
        "beta_viewer": UserFactory(username="beta_viewer"),
    }
    PermissionAssignment.objects.create(identity=users["operator"], permission_set=PermissionSet.objects.get(name="operator"))
    PermissionAssignment.objects.create(identity=users["beta_viewer"], permission_set=PermissionSet.objects.get(name="viewer"),
                                        packs=["beta"])
    executions = {
        "alpha": ExecutionFactory(action=ActionFactory(pack=alpha, name="run")),
        "beta": ExecutionFactory(action=ActionFactory(pack=beta, name="run")),
    }
    return {"users": users, "executions": executions}


def jwt_for(user) -> str:
    return str(AccessToken.for_user(user))


def api_token_for(user, **kwargs) -> str:
    return ApiToken.issue(user, "ws-test", **kwargs)[1]


def run(coro):
    """Run a scenario on a fresh event loop, then close the database connections the consumer's thread
    opened (CONN_MAX_AGE keeps them, and PostgreSQL cannot drop a test database still in use)."""
    async def scenario():
        try:
            return await coro
        finally:
            await sync_to_async(connections.close_all)()

    return asyncio.run(scenario())


async def connect(path: str = "/ws/", headers=None) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(application, path, headers=[(b"origin", b"http://localhost"), *(headers or [])])
    connected, _ = await communicator.connect()
    assert connected
    return communicator


async def receive(communicator: WebsocketCommunicator) -> dict:
    return json.loads(await communicator.receive_from(timeout=RECEIVE_TIMEOUT))


async def expect_close(communicator: WebsocketCommunicator) -> dict:
    message = await communicator.receive_output(timeout=RECEIVE_TIMEOUT)
    assert message["type"] == "websocket.close", message
    return message
