"""WebSocket ``/ws/``: live notifications (SPEC §11; the protocol is described in docs/notifications.md).

1. Authenticate with a JWT access token or an API token: ``?token=``, an ``Authorization: Bearer|Token``
   header, or a first message ``{"token": ...}`` within :data:`AUTH_TIMEOUT` seconds. Failure closes the
   socket with code 4401. A token that expires closes the socket (4401) when it does; sending a fresh
   ``{"token": ...}`` of the same identity before then keeps it open.
2. ``{"subscribe": [topics], "since": {topic: seq | {"seq", "stdout", "stderr"}}}``. Each topic is checked
   against the caller's permissions; refused topics are listed with a reason and nothing of them is
   delivered. The reply carries each subscribed topic's current ``seq``; an ``execution:<id>`` topic
   is followed by a ``snapshot`` of the execution (and, when ``since`` names output offsets, the output
   from there, read from the database).
3. Messages arrive as ``{"topic", "type", "id", ..., "seq"}``; ``{"unsubscribe": [topics]}``,
   ``{"ping": x}`` → ``{"type": "pong", "ping": x}``.

Topics: ``execution:<id>`` (status, output, task, inquiry of one execution; executions:view on its pack),
``executions`` / ``executions:<pack>`` (status changes), ``inquiries`` / ``inquiries:<pack>``. An identity
whose grant is limited to some packs subscribing to ``executions`` (``inquiries``) is subscribed to the
per-pack topic of each of its packs instead: every message it receives is one it may see, and each
stream keeps its own gap-free seq.
"""
from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.utils import timezone

from . import services
from .transport import ALIAS, LocalTransport, dumps, get_transport, group_name, notification_layer

AUTH_TIMEOUT = 10.0  # seconds an unauthenticated socket may stay open
CLOSE_UNAUTHENTICATED = 4401
MAX_TOPICS_PER_MESSAGE = 100
MAX_STREAMS = 1000  # per socket
TOPIC_RE = re.compile(r"^(?:execution:[1-9][0-9]{0,18}|(?:executions|inquiries)(?::[a-z][a-z0-9_-]{0,99})?)$")
BROAD_RESOURCES = {"executions": "executions", "inquiries": "inquiries"}
OUTPUT_STREAMS = ("stdout", "stderr")
REFUSED_EXECUTION = "no such execution, or no executions:view grant on its pack"


# --- authentication -----------------------------------------------------------------------------------

@database_sync_to_async
def identify(raw: str):
    """``(user, expires_at)`` for a JWT access token or an API token, or None."""
    from apps.accounts.models import TOKEN_PREFIX, ApiToken, hash_token

    if raw.startswith(TOKEN_PREFIX):  # the same rules as apps.accounts.authentication.ApiTokenAuthentication
        token = ApiToken.objects.select_related("user").filter(key_hash=hash_token(raw)).first()
        if token is None or not token.is_active or not token.user.is_active:
            return None
        now = timezone.now()
        if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        return token.user, token.expires_at
    from rest_framework.exceptions import AuthenticationFailed
    from rest_framework_simplejwt.authentication import JWTAuthentication
    from rest_framework_simplejwt.exceptions import InvalidToken

    auth = JWTAuthentication()
    try:
        token = auth.get_validated_token(raw)
        user = auth.get_user(token)
    except (InvalidToken, AuthenticationFailed):
        return None
    if not user.is_active:
        return None
    expires = token.get("exp")
    return user, datetime.fromtimestamp(expires, tz=UTC) if expires else None


def token_from_scope(scope) -> str | None:
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if query.get("token"):
        return query["token"][0]
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            parts = value.decode("latin-1").split()
            if len(parts) == 2 and parts[0].lower() in ("bearer", "token"):
                return parts[1]
    return None


# --- permissions and snapshots ------------------------------------------------------------------------

@database_sync_to_async
def authorize(user, topic: str) -> tuple[list[str], str]:
    """The streams ``topic`` stands for, for this user ([] and a reason when refused)."""
    from apps.accounts.permissions import has_grant, visible_packs
    from apps.executions.models import Execution

    if not TOPIC_RE.match(topic):
        return [], "unknown topic (execution:<id>, executions[:<pack>], inquiries[:<pack>])"
    kind, _, ident = topic.partition(":")
    if kind == "execution":
        pack = Execution.objects.filter(pk=int(ident)).values_list("pack_ref", flat=True).first()
        if pack is None or not has_grant(user, "executions", "view", pack):
            return [], REFUSED_EXECUTION
        return [topic], ""
    resource = BROAD_RESOURCES[kind]
    if ident:
        if has_grant(user, resource, "view", ident):
            return [topic], ""
        return [], f"no {resource}:view grant on pack {ident}"
    packs = visible_packs(user, resource)
    if packs is None:
        return [topic], ""
    if not packs:
        return [], f"no {resource}:view grant"
    return [f"{kind}:{pack}" for pack in sorted(packs)], ""


def snapshot_of(execution_id: int) -> dict[str, Any] | None:
    from apps.executions.models import Execution
    from apps.inquiries.models import Inquiry
    from apps.workflows.models import TaskExecution

    execution = Execution.objects.filter(pk=execution_id).only(
        "id", "status", "action_ref", "pack_ref", "parent_id", "created", "scheduled_at", "started_at",
        "finished_at", "stdout_size", "stderr_size").first()
    if execution is None:
        return None
    body = services.status_fields(execution)
    body.update(type="snapshot", stdout_size=execution.stdout_size, stderr_size=execution.stderr_size)
    tasks = list(TaskExecution.objects.filter(workflow_execution__execution_id=execution_id).order_by("id"))
    if tasks:
        body["tasks"] = [services.task_fields(task) for task in tasks]
    inquiry = Inquiry.objects.filter(execution_id=execution_id).select_related("responded_by").first()
    if inquiry is not None:
        inquiry._state.fields_cache["execution"] = execution
        body["inquiry"] = services.inquiry_fields(inquiry, execution.pack_ref)
    return body


def output_since(execution_id: int, offsets: dict[str, int]) -> list[dict[str, Any]]:
    """The stored output of each stream from its byte offset on, as ``output`` messages (oldest first)."""
    from apps.executions.models import OutputChunk

    messages = []
    for stream, start in offsets.items():
        chunks = OutputChunk.objects.filter(execution_id=execution_id, stream=stream)
        previous = chunks.filter(offset__lt=start).order_by("-offset").values_list("offset", "data").first()
        if previous is not None:  # the client stopped inside a chunk: send the rest of it
            raw = previous[1].encode()
            cut = start - previous[0]
            while cut < len(raw) and raw[cut] & 0xC0 == 0x80:  # not inside a UTF-8 character
                cut += 1
            if cut < len(raw):
                messages.append({"stream": stream, "offset": previous[0] + cut, "data": raw[cut:].decode()})
        for offset, data in chunks.filter(offset__gte=start).order_by("offset").values_list("offset", "data").iterator():
            messages.append({"stream": stream, "offset": offset, "data": data})
    return [{"topic": f"execution:{execution_id}", "type": "output", "id": execution_id, **m, "replay": True}
            for m in messages]


@database_sync_to_async
def snapshots(requests: list[tuple[int, dict[str, int]]]) -> list[dict[str, Any]]:
    out = []
    for execution_id, offsets in requests:
        body = snapshot_of(execution_id)
        if body is None:
            continue
        out.append(body)
        if offsets:
            out.extend(output_since(execution_id, offsets))
    return out


def parse_since(value) -> tuple[int | None, dict[str, int]]:
    """``17`` or ``{"seq": 17, "stdout": 1024, "stderr": 0}`` → (seq, output offsets)."""
    if isinstance(value, bool):
        raise ValueError("since values are a seq (integer) or an object {seq, stdout, stderr}")
    if isinstance(value, int):
        return value, {}
    if not isinstance(value, dict) or set(value) - {"seq", *OUTPUT_STREAMS}:
        raise ValueError("since values are a seq (integer) or an object {seq, stdout, stderr}")
    for key, number in value.items():
        if isinstance(number, bool) or not isinstance(number, int) or number < 0:
            raise ValueError(f"since.{key} must be a non-negative integer")
    return value.get("seq"), {s: value[s] for s in OUTPUT_STREAMS if s in value}


# --- the consumer -------------------------------------------------------------------------------------

class NotificationConsumer(AsyncJsonWebsocketConsumer):
    @property
    def channel_layer_alias(self) -> str:
        notification_layer()  # make sure the alias is registered (settings do not name it)
        return ALIAS

    @classmethod
    async def encode_json(cls, content) -> str:
        return dumps(content)  # datetimes as the REST API writes them

    async def connect(self):
        self.user = None
        self.expires_at: datetime | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.streams: dict[str, set[str]] = {}  # stream -> the subscribed topics it came from
        self.topics: dict[str, list[str]] = {}  # subscribed topic -> its streams
        transport = get_transport()
        if isinstance(transport, LocalTransport):
            transport.attach(asyncio.get_running_loop())
        await self.accept()
        raw = token_from_scope(self.scope)
        if raw is not None:
            await self.authenticate(raw)
        else:
            self.set_timer(AUTH_TIMEOUT, "authentication timeout: send {\"token\": ...} first")

    def set_timer(self, delay: float, reason: str) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(
            max(delay, 0.0), lambda: asyncio.ensure_future(self.close(code=CLOSE_UNAUTHENTICATED, reason=reason)))

    async def authenticate(self, raw: str) -> bool:
        found = await identify(raw) if isinstance(raw, str) and raw else None
        if found is None:
            await self.close(code=CLOSE_UNAUTHENTICATED, reason="invalid or expired token")
            return False
        user, expires_at = found
        if self.user is not None and user.pk != self.user.pk:
            await self.send_json({"type": "error", "detail": "this token belongs to another identity: ignored"})
            return True
        self.user, self.expires_at = user, expires_at
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if expires_at is not None:
            self.set_timer((expires_at - timezone.now()).total_seconds(), "token expired")
        await self.send_json({"type": "authenticated", "user": user.username, "expires_at": services.iso(expires_at)})
        return True

    async def receive(self, text_data=None, bytes_data=None, **kwargs):
        if text_data is None:
            await self.send_json({"type": "error", "detail": "send JSON text frames, not binary ones"})
            return
        try:
            content = json.loads(text_data)
        except ValueError:
            await self.send_json({"type": "error", "detail": "messages must be JSON objects"})
            return
        await self.receive_json(content)

    async def receive_json(self, content, **kwargs):
        if not isinstance(content, dict):
            await self.send_json({"type": "error", "detail": "messages must be JSON objects"})
            return
        known = {"token", "subscribe", "since", "unsubscribe", "ping"}
        if "token" in content and not await self.authenticate(content["token"]):
            return
        if self.user is None:
            await self.close(code=CLOSE_UNAUTHENTICATED, reason="authenticate first: {\"token\": ...}")
            return
        if set(content) - known or not set(content) & (known - {"since"}):
            await self.send_json({"type": "error", "detail": f"unknown message; expected keys among {sorted(known)}"})
            return
        if "subscribe" in content:
            await self.subscribe(content["subscribe"], content.get("since"))
        elif "since" in content:
            await self.send_json({"type": "error", "detail": "since goes with subscribe"})
        if "unsubscribe" in content:
            await self.unsubscribe(content["unsubscribe"])
        if "ping" in content:
            await self.send_json({"type": "pong", "ping": content["ping"]})

    async def subscribe(self, topics, since) -> None:
        if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
            await self.send_json({"type": "error", "detail": "subscribe must be a list of topic strings"})
            return
        if len(topics) > MAX_TOPICS_PER_MESSAGE:
            await self.send_json({"type": "error", "detail": f"at most {MAX_TOPICS_PER_MESSAGE} topics per message"})
            return
        since = since if since is not None else {}
        try:
            if not isinstance(since, dict):
                raise ValueError("since must be an object {topic: seq}")
            resume = {topic: parse_since(value) for topic, value in since.items()}
        except ValueError as exc:
            await self.send_json({"type": "error", "detail": str(exc)})
            return
        joined: list[str] = []
        refused: list[dict[str, str]] = []
        for topic in dict.fromkeys(topics):
            streams, reason = await authorize(self.user, topic)
            if streams and len(self.streams.keys() | set(streams)) > MAX_STREAMS:
                streams, reason = [], f"at most {MAX_STREAMS} subscriptions per connection"
            if not streams:
                refused.append({"topic": topic, "reason": reason})
                continue
            for stream in streams:
                if stream not in self.streams:
                    await self.channel_layer.group_add(group_name(stream), self.channel_name)
                    self.streams[stream] = set()
                self.streams[stream].add(topic)
            self.topics[topic] = streams
            joined.extend(s for s in streams if s not in joined)
        # Read the counters after joining the groups, and the snapshots after the counters: whatever the
        # snapshot misses arrives live with a higher seq; a live message with seq <= these is already in it.
        seqs = await sync_to_async(get_transport().current, thread_sensitive=False)(joined)
        missed: dict[str, int | None] = {}
        for stream, (seen, _offsets) in resume.items():
            if stream in seqs and seen is not None:
                missed[stream] = seqs[stream] - seen if seen <= seqs[stream] else None
        reply: dict[str, Any] = {"type": "subscribed", "topics": joined, "refused": refused, "seq": seqs}
        if missed:
            reply["missed"] = missed
        await self.send_json(reply)
        wanted = [(int(s.split(":", 1)[1]), resume.get(s, (None, {}))[1]) for s in joined if s.startswith("execution:")]
        if wanted:
            for body in await snapshots(wanted):
                topic = f"execution:{body['id']}"
                if body["type"] == "snapshot":
                    body = {"topic": topic, **body, "seq": seqs.get(topic, 0)}
                await self.send_json(body)

    async def unsubscribe(self, topics) -> None:
        if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
            await self.send_json({"type": "error", "detail": "unsubscribe must be a list of topic strings"})
            return
        left = []
        for topic in topics:
            for stream in self.topics.pop(topic, []):
                owners = self.streams.get(stream, set())
                owners.discard(topic)
                if not owners:
                    self.streams.pop(stream, None)
                    await self.channel_layer.group_discard(group_name(stream), self.channel_name)
                    left.append(stream)
        await self.send_json({"type": "unsubscribed", "topics": left})

    async def disconnect(self, code):
        if getattr(self, "timer", None) is not None:
            self.timer.cancel()
        for stream in getattr(self, "streams", {}):
            await self.channel_layer.group_discard(group_name(stream), self.channel_name)

    async def notify(self, event):
        await self.send(text_data=event["text"])
