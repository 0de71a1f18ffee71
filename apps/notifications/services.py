"""Publish a change: persist it, then (after commit) push it to WebSocket subscribers."""
from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

from .models import Notification

log = logging.getLogger(__name__)


def group_name(topic: str) -> str:
    # Channels group names allow only ASCII alphanumerics, hyphens, underscores and periods.
    return "t." + "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in topic)


def publish(topic: str, type: str, *, object_id: int | None = None, pack_ref: str = "", **payload: Any) -> Notification:
    note = Notification.objects.create(topic=topic, type=type, object_id=object_id, pack_ref=pack_ref, payload=payload)
    message = {"type": "notify", "body": {"type": type, "topic": topic, "id": object_id, "seq": note.pk, **payload}}
    transaction.on_commit(lambda: _send(topic, message))
    return note


def _send(topic: str, message: dict) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(group_name(topic), message)
    except Exception:  # live delivery is best effort; the row above is the record
        log.warning("could not push notification for %s", topic, exc_info=True)
