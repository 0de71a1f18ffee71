"""WebSocket ``/ws/``: authenticate with a JWT (``?token=`` or a first ``{"token": ...}`` message), then
``{"subscribe": ["execution:123", "executions", "inquiries"]}``. Each topic is checked against the
caller's permissions before the socket joins its group."""
from __future__ import annotations

from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from .services import group_name

TOPIC_RESOURCES = {"execution": "executions", "executions": "executions", "inquiries": "inquiries",
                   "inquiry": "inquiries", "events": "events"}


@database_sync_to_async
def _user_from_token(raw: str):
    from django.contrib.auth import get_user_model
    from rest_framework_simplejwt.exceptions import TokenError
    from rest_framework_simplejwt.tokens import AccessToken

    try:
        token = AccessToken(raw)
    except TokenError:
        return None
    return get_user_model().objects.filter(pk=token["user_id"], is_active=True).first()


@database_sync_to_async
def _may_subscribe(user, topic: str) -> bool:
    from apps.accounts.permissions import has_grant
    from apps.executions.models import Execution

    kind, _, ident = topic.partition(":")
    resource = TOPIC_RESOURCES.get(kind)
    if resource is None:
        return False
    if kind == "execution":
        if not ident.isdigit():
            return False
        pack = Execution.objects.filter(pk=int(ident)).values_list("pack_ref", flat=True).first()
        return pack is not None and has_grant(user, resource, "view", pack)
    return has_grant(user, resource, "view")


class NotificationConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        self.user = None
        self.groups_joined: set[str] = set()
        await self.accept()
        query = parse_qs(self.scope.get("query_string", b"").decode())
        if "token" in query:
            self.user = await _user_from_token(query["token"][0])
            if self.user is None:
                await self.close(code=4401)

    async def receive_json(self, content, **kwargs):
        if not isinstance(content, dict):
            await self.send_json({"type": "error", "detail": "messages must be JSON objects"})
            return
        if self.user is None:
            token = content.get("token")
            self.user = await _user_from_token(token) if isinstance(token, str) else None
            if self.user is None:
                await self.close(code=4401)
                return
            if "subscribe" not in content:
                await self.send_json({"type": "authenticated", "user": self.user.username})
                return
        topics = content.get("subscribe")
        if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
            await self.send_json({"type": "error", "detail": "subscribe must be a list of topic strings"})
            return
        accepted, refused = [], []
        for topic in topics:
            if await _may_subscribe(self.user, topic):
                group = group_name(topic)
                await self.channel_layer.group_add(group, self.channel_name)
                self.groups_joined.add(group)
                accepted.append(topic)
            else:
                refused.append(topic)
        await self.send_json({"type": "subscribed", "topics": accepted, "refused": refused})

    async def disconnect(self, code):
        for group in self.groups_joined:
            await self.channel_layer.group_discard(group, self.channel_name)

    async def notify(self, event):
        await self.send_json(event["body"])
