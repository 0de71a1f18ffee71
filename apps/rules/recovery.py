"""No accepted event is lost: events still ``received`` (their pump message was lost, e.g. the process died
mid-burst, or their matching failed) are dispatched again. Matching is idempotent (one enforcement per rule
and event), so a duplicate message is harmless."""
from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from apps.core.periodic import on_startup, register
from apps.triggers.models import Event, EventStatus
from apps.triggers.services import dispatch, wake

BATCH = 5000


@register("rules.redispatch_events", every=30)
def redispatch_stale_events(older_than: float | None = None) -> int:
    """Re-send events still unmatched after ``older_than`` seconds, each at most once per that period.

    The per-event claim (``redispatched_at``) keeps a backlog that is merely slow from being flooded with
    duplicates: an event is re-sent again only if it is still unmatched a whole period after the last re-send.
    """
    seconds = settings.ATTUNE_EVENT_REDISPATCH_SECONDS if older_than is None else older_than
    now = timezone.now()
    cutoff = now - timedelta(seconds=seconds)
    candidates = (Event.objects.filter(status=EventStatus.RECEIVED, created__lt=cutoff)
                  .filter(Q(redispatched_at__isnull=True) | Q(redispatched_at__lt=cutoff))
                  .order_by("id").values_list("id", "redispatched_at")[:BATCH])
    sent = 0
    for event_id, previous in candidates:
        if Event.objects.filter(pk=event_id, redispatched_at=previous).update(redispatched_at=now):
            dispatch(event_id)
            sent += 1
    return sent


@on_startup("rules.redispatch_events")
def redispatch_on_startup() -> int:
    """A pump now for every event still ``received``: the in-memory queue (embedded) died with the process,
    and a killed worker's pump message (production) waits for the broker's visibility timeout. Returns how
    many events were waiting."""
    waiting = Event.objects.filter(status=EventStatus.RECEIVED).count()
    if waiting:
        wake(force=True)
    return waiting
