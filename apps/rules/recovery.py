"""No accepted event is lost: events still ``received`` (their matching message was lost, e.g. the
process died mid-burst) are dispatched again. Matching is idempotent (one enforcement per rule and event),
so a duplicate message is harmless."""
from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from apps.core.periodic import on_startup, register
from apps.triggers.models import Event, EventStatus
from apps.triggers.services import dispatch

BATCH = 5000


@register("rules.redispatch_events", every=10)
def redispatch_stale_events(older_than: float | None = None) -> int:
    seconds = settings.ATTUNE_EVENT_REDISPATCH_SECONDS if older_than is None else older_than
    cutoff = timezone.now() - timedelta(seconds=seconds)
    ids = list(Event.objects.filter(status=EventStatus.RECEIVED, created__lt=cutoff)
               .order_by("id").values_list("id", flat=True)[:BATCH])
    for event_id in ids:
        dispatch(event_id)
    return len(ids)


@on_startup("rules.redispatch_events")
def redispatch_on_startup() -> int:
    # Embedded mode: the in-memory queue died with the process, so every unmatched event is re-sent now.
    return redispatch_stale_events(older_than=0) if settings.EMBEDDED else 0
