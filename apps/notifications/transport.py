"""How a published message reaches the WebSocket consumers, and where its ``seq`` comes from.

Two transports, chosen by the ``default`` entry of ``CHANNEL_LAYERS``:

* **local** (embedded mode, ``InMemoryChannelLayer``): everything runs in one process. ``seq`` counters live
  in memory; a message is handed to the server's event loop (``call_soon_threadsafe``) only when some
  socket of this process has joined its group, so an unobserved change costs a counter increment.
* **redis** (production, channels-redis): the consumers use channels-redis' ``RedisPubSubChannelLayer``
  (one SUBSCRIBE per group per web process, a group message is one ``PUBLISH``). Publishers need no
  event loop: one Lua script call per change increments each topic's counter and publishes the message
  with that counter spliced in, atomically, so on every topic the delivery order is the ``seq`` order, in
  one round trip from any process (web, worker, scheduler). The message is the JSON text sent to the
  clients, encoded once by the publisher, never re-encoded per socket.

Delivery is best effort (SPEC §11): a message nobody is subscribed to is dropped (pub/sub), and a
subscriber that was not connected misses it; ``seq`` lets it notice and resync.
"""
from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from channels.layers import channel_layers
from django.conf import settings

ALIAS = "attune.notifications"  # the channels-layer alias the consumer uses (registered here, not in settings)
GROUP_PREFIX = "t."
MAX_GROUP_NAME = 99  # channels: group names shorter than 100 characters
LOCAL_MAX_TOPICS = 100_000  # embedded: seq counters kept (least recently used dropped first)

# ARGV[1]: the message members without topic and seq; then one argument per topic: "<seconds to keep its
# counter, 0: forever> <counter key> <pub/sub channel> <topic>" (few arguments: packing them is most of the
# client's cost). Keys are not declared in KEYS: Attune uses one Redis server, never a cluster. The topic is
# validated (nothing to escape in JSON). The channel message is what channels-redis' pub/sub layer unpacks
# with msgpack: {"type": "notify", "text": <the JSON sent to the clients>}.
PUBLISH_LUA = """
local seqs = {}
for i = 2, #ARGV do
  local ttl, key, channel, topic = string.match(ARGV[i], '^(%d+) (%S+) (%S+) (%S+)$')
  local seq = redis.call('INCR', key)
  if tonumber(ttl) > 0 then redis.call('EXPIRE', key, ttl) end
  local text = '{"topic":"' .. topic .. '",' .. ARGV[1] .. ',"seq":' .. seq .. '}'
  redis.call('PUBLISH', channel, cmsgpack.pack({type = 'notify', text = text}))
  seqs[#seqs + 1] = seq
end
return seqs
"""


_GROUP_NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")
_SAFE_TOPIC_RE = re.compile(r"^[A-Za-z0-9:._-]+$")


@functools.lru_cache(maxsize=4096)
def group_name(topic: str) -> str:
    """The channels group of a topic: ``execution:42`` → ``t.execution.42`` (topics are validated before)."""
    name = GROUP_PREFIX + topic.replace(":", ".")
    if len(name) > MAX_GROUP_NAME or not _GROUP_NAME_RE.match(name):
        name = GROUP_PREFIX + "h." + hashlib.sha256(topic.encode()).hexdigest()[:40]
    return name


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):  # as the REST API writes it: ISO 8601, UTC as Z
        text = value.isoformat()
        return text[:-6] + "Z" if text.endswith("+00:00") else text
    return str(value)


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=_json_default)


def encode(body: dict[str, Any]) -> str:
    """The JSON members of ``body`` without the braces (the transport adds topic and seq around them).
    Datetimes are formatted here, so a message nobody receives never pays for it."""
    return dumps(body)[1:-1]


def message_head(topic: str, inner: str) -> str:
    """``{"topic":…,<inner>,"seq":`` — the transport appends the seq and the closing brace."""
    return '{"topic":' + json.dumps(topic) + "," + inner + ',"seq":'


class LocalTransport:
    kind = "local"

    def __init__(self, layer) -> None:
        self.layer = layer
        self.counters: OrderedDict[str, int] = OrderedDict()
        self.lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop serving this process's sockets (the consumer calls this on connect)."""
        self.loop = loop

    def send(self, topics: Sequence[tuple[str, int]], body: dict[str, Any]) -> list[int]:
        groups = getattr(self.layer, "groups", None)
        loop = self.loop
        seqs = []
        inner = None  # encoded only when some socket of this process listens
        # One lock around numbering and hand-off: two threads publishing on one topic hand their messages
        # to the loop in seq order.
        with self.lock:
            for topic, _ttl in topics:
                seq = self.counters.pop(topic, 0) + 1
                self.counters[topic] = seq
                seqs.append(seq)
                group = group_name(topic)
                if groups is not None and group not in groups:
                    continue
                if loop is None or loop.is_closed():
                    continue
                if inner is None:
                    inner = encode(body)
                message = {"type": "notify", "text": message_head(topic, inner) + str(seq) + "}"}
                loop.call_soon_threadsafe(self._deliver, group, message)
            while len(self.counters) > LOCAL_MAX_TOPICS:
                self.counters.popitem(last=False)
        return seqs

    def send_many(self, messages: Sequence[tuple[Sequence[tuple[str, int]], dict[str, Any]]]) -> list[list[int]]:
        return [self.send(topics, body) for topics, body in messages]

    def _deliver(self, group: str, message: dict) -> None:
        # On the loop, in call order. group_send of the in-memory layer enqueues without awaiting anything
        # first, so tasks created in this order deliver in this order.
        asyncio.ensure_future(self.layer.group_send(group, message))

    def current(self, topics: Iterable[str]) -> dict[str, int]:
        with self.lock:
            return {topic: self.counters.get(topic, 0) for topic in topics}


class RedisTransport:
    kind = "redis"

    def __init__(self, layer, url: str, prefix: str) -> None:
        import redis

        if not prefix or any(ch.isspace() for ch in prefix):
            raise ValueError(f"the channel layer prefix {prefix!r} must be non-empty, without spaces")
        self.layer = layer
        self.prefix = prefix
        # One pool per process (redis-py resets it after a fork); short timeouts: a stuck Redis must not
        # hold an execution for long, and a lost notification is acceptable.
        self.client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self.sha = hashlib.sha1(PUBLISH_LUA.encode()).hexdigest().encode()  # the name Redis gives the script

    def seq_key(self, topic: str) -> str:
        return f"{self.prefix}:seq:{topic}"

    def channel(self, topic: str) -> str:
        return f"{self.prefix}__group__{group_name(topic)}"  # RedisPubSubLoopLayer._get_group_channel_name

    def command(self, topics: Sequence[tuple[str, int]], body: dict[str, Any]) -> bytes:
        """The EVALSHA of one message, packed (RESP) here: redis-py's generic command path costs more CPU
        than the round trip itself (about 100 µs against 60 µs per call on the benchmark box)."""
        parts = [b"EVALSHA", self.sha, b"0", encode(body).encode()]
        for topic, ttl in topics:
            if not _SAFE_TOPIC_RE.match(topic):  # spliced into JSON by the script: nothing to escape
                raise ValueError(f"topic {topic!r} needs JSON escaping")
            parts.append(f"{int(ttl)} {self.seq_key(topic)} {self.channel(topic)} {topic}".encode())
        return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)

    def send(self, topics: Sequence[tuple[str, int]], body: dict[str, Any]) -> list[int]:
        return self.send_many([(topics, body)])[0]

    def send_many(self, messages: Sequence[tuple[Sequence[tuple[str, int]], dict[str, Any]]]) -> list[list[int]]:
        """All messages in one write (a pipeline), in order: one round trip whatever their number."""
        from redis.exceptions import NoScriptError

        commands = [self.command(topics, body) for topics, body in messages]
        replies = self._pipeline(commands)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:  # Redis restarted, or its script cache was flushed: those commands did not run
            self.client.script_load(PUBLISH_LUA)
            for i, reply in zip(missing, self._pipeline([commands[i] for i in missing])):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return [[int(seq) for seq in reply] for reply in replies]

    def _pipeline(self, commands: list[bytes]) -> list:
        """Each command's reply, or the error Redis answered; one retry on a new connection when the pooled
        one turns out dead (a restarted Redis): a message may then be published twice, never lost silently."""
        from redis.exceptions import ConnectionError, ResponseError, TimeoutError

        pool = self.client.connection_pool
        for attempt in range(2):
            connection = pool.get_connection()
            try:
                connection.send_packed_command(commands, check_health=False)
                replies: list = []
                for _ in commands:
                    try:
                        replies.append(connection.read_response())
                    except ResponseError as exc:  # read every reply, so the connection stays in step
                        replies.append(exc)
                return replies
            except (ConnectionError, TimeoutError):
                connection.disconnect()  # a half-read reply must not reach the next user of this connection
                if attempt:
                    raise
            finally:
                pool.release(connection)
        raise AssertionError("unreachable")

    def current(self, topics: Iterable[str]) -> dict[str, int]:
        topics = list(topics)
        if not topics:
            return {}
        values = self.client.mget([self.seq_key(t) for t in topics])
        return {topic: int(value or 0) for topic, value in zip(topics, values)}


def _redis_settings() -> tuple[str, str] | None:
    """(Redis URL, pub/sub prefix) when the default channel layer is channels-redis, else None."""
    config = getattr(settings, "CHANNEL_LAYERS", {}).get("default", {})
    if not str(config.get("BACKEND", "")).startswith("channels_redis."):
        return None
    options = config.get("CONFIG", {})
    host = (options.get("hosts") or ["redis://localhost:6379"])[0]
    if isinstance(host, dict):
        host = host.get("address", "redis://localhost:6379")
    if isinstance(host, (tuple, list)):
        host = f"redis://{host[0]}:{host[1]}"
    db = (urlsplit(host).path or "/0").strip("/") or "0"
    # Pub/sub channels ignore the database index: put it in the prefix, so two installations sharing a Redis
    # server on different database indexes never see each other's messages.
    return host, f"{options.get('prefix', 'asgi')}.db{db}.notify"


def notification_layer():
    """The channels layer of ``/ws/`` (registered under :data:`ALIAS` on first use): the default in-memory
    layer in embedded mode; in production a channels-redis pub/sub layer on the default layer's Redis."""
    layer = channel_layers.backends.get(ALIAS)
    if layer is None:
        redis_settings = _redis_settings()
        if redis_settings is None:
            layer = channel_layers["default"]
        else:
            from channels_redis.pubsub import RedisPubSubChannelLayer

            layer = RedisPubSubChannelLayer(hosts=[redis_settings[0]], prefix=redis_settings[1])
        channel_layers.set(ALIAS, layer)
    return layer


_transport: LocalTransport | RedisTransport | None = None
_transport_lock = threading.Lock()


def get_transport() -> LocalTransport | RedisTransport:
    global _transport
    layer = notification_layer()
    transport = _transport
    if transport is None or transport.layer is not layer:
        with _transport_lock:
            transport = _transport
            if transport is None or transport.layer is not layer:
                redis_settings = _redis_settings()
                if redis_settings is None:
                    transport = LocalTransport(layer)
                else:
                    transport = RedisTransport(layer, *redis_settings)
                _transport = transport
    return transport
