"""Events in: every source (webhooks, timers, sensors, the API, the system) goes through :func:`emit`.

The event row is written first (durable), then — after commit — the rules layer is asked by task name to
match it (``attune.rules.process_event``), so this layer never imports the rules layer. An event whose
payload violates its trigger's schema is kept with status ``invalid`` and the reason, and is not matched.
"""
from __future__ import annotations

import logging
from typing import Any

from django.db import transaction
from jsonschema import Draft202012Validator

from apps.core.rows import insert
from attune.celery import app as celery_app

from .models import Event, EventStatus, Trigger

log = logging.getLogger("attune.events")

PROCESS_EVENT_TASK = "attune.rules.process_event"
EVENTS_QUEUE = "orchestration"


class UnknownTrigger(LookupError):
    pass


class TriggerDisabled(Exception):
    """The trigger is disabled: it accepts no events (API: 409)."""


def payload_errors(trigger: Trigger, payload: Any) -> list[str]:
    schema = trigger.payload_schema or {}
    if not schema:
        return []
    errors = []
    for error in Draft202012Validator(schema).iter_errors(payload):
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        errors.append(f"payload {where}: {error.message}")
    return errors


def resolve_trigger(trigger: Trigger | str) -> Trigger:
    if isinstance(trigger, Trigger):
        return trigger
    found = Trigger.objects.select_related("pack").filter(ref=trigger).first()
    if found is None:
        raise UnknownTrigger(f"no trigger {trigger!r}")
    return found


def emit(
    trigger: Trigger | str,
    payload: Any,
    *,
    meta: dict[str, Any] | None = None,
    user=None,
    source_event: Event | None = None,
) -> Event:
    """Record one occurrence of ``trigger`` and hand it to rule matching (after commit)."""
    trigger = resolve_trigger(trigger)
    if not trigger.enabled:
        raise TriggerDisabled(f"trigger {trigger.ref} is disabled")
    errors = payload_errors(trigger, payload)
    event = insert(Event(
        trigger=trigger,
        trigger_ref=trigger.ref,
        payload=payload,
        meta=meta or {},
        status=EventStatus.INVALID if errors else EventStatus.RECEIVED,
        error="; ".join(errors),
        emitted_by=user if getattr(user, "is_authenticated", False) else None,
        source_event=source_event,
    ))
    if not errors:
        event_id = event.pk
        transaction.on_commit(lambda: dispatch(event_id))
    return event


def dispatch(event_id: int) -> None:
    from apps.executions.services import message_reprs

    celery_app.send_task(PROCESS_EVENT_TASK, args=[event_id], queue=EVENTS_QUEUE, ignore_result=True,
                         **message_reprs(event_id))


def re_emit(event: Event, user=None) -> Event:
    """A new event with the same trigger and payload, linked to the original."""
    return emit(event.trigger or event.trigger_ref, event.payload, meta={**event.meta, "re_emit_of": event.pk},
                user=user, source_event=event)
