"""Events in: every source (webhooks, timers, sensors, the API, the system) goes through :func:`emit`.

The event row is written first (durable), then — after commit — the rules layer is asked by task name to
match it, so this layer never imports the rules layer: :func:`wake` publishes the event pump
(``attune.rules.process_events``, which matches every ``received`` event in batches) unless one is already
pending; the re-dispatch job sends single events again (``attune.rules.process_event``). An event whose
payload violates its trigger's schema is kept with status ``invalid`` and the reason, and is not matched.
"""
from __future__ import annotations

import logging
from typing import Any

from django.core.cache import cache
from django.db import transaction
from jsonschema import Draft202012Validator

from apps.core.rows import insert
from attune.celery import app as celery_app

from .models import Event, EventStatus, Trigger

log = logging.getLogger("attune.events")

PROCESS_EVENT_TASK = "attune.rules.process_event"
PROCESS_EVENTS_TASK = "attune.rules.process_events"
EVENTS_QUEUE = "orchestration"
PUMP_FLAG = "rules:event-pump-pending"
# A pump message is pending (published, not yet emptied the backlog) while this flag is set. Its expiry bounds
# how long a lost pump (a worker killed with it) can keep new events from publishing another.
PUMP_FLAG_SECONDS = 30


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
        transaction.on_commit(wake)
    return event


def wake(*, force: bool = False) -> None:
    """Make sure a pump looks at the events committed so far: publish one unless one is pending (``force``:
    publish anyway, and mark it pending). If the flag cannot be read (the cache is down), publish."""
    try:
        if not _set_pump_flag(force):
            return
    except Exception:
        log.warning("event pump flag unavailable: publishing a pump", exc_info=True)
    try:
        celery_app.send_task(PROCESS_EVENTS_TASK, queue=EVENTS_QUEUE, ignore_result=True, argsrepr="()",
                             kwargsrepr="{}")
    except Exception:  # the events are stored: the re-dispatch job and the next wake() match them
        log.error("could not publish the event pump; stored events wait for the re-dispatch job", exc_info=True)
        try:
            clear_pump_flag()
        except Exception:
            pass


def _set_pump_flag(force: bool) -> bool:
    from apps.core.generation import shared_redis

    client = shared_redis()
    if client is not None:  # one plain SET NX EX: Django's cache.add costs three times as much CPU
        return bool(client.set(client.attune_key(PUMP_FLAG), b"1", nx=not force, ex=PUMP_FLAG_SECONDS))
    if force:
        cache.set(PUMP_FLAG, 1, timeout=PUMP_FLAG_SECONDS)
        return True
    return cache.add(PUMP_FLAG, 1, timeout=PUMP_FLAG_SECONDS)


def clear_pump_flag() -> None:
    from apps.core.generation import shared_redis

    client = shared_redis()
    if client is not None:
        client.delete(client.attune_key(PUMP_FLAG))
    else:
        cache.delete(PUMP_FLAG)


def dispatch(event_id: int) -> None:
    from apps.executions.services import message_reprs

    celery_app.send_task(PROCESS_EVENT_TASK, args=[event_id], queue=EVENTS_QUEUE, ignore_result=True,
                         **message_reprs(event_id))


def re_emit(event: Event, user=None) -> Event:
    """A new event with the same trigger and payload, linked to the original."""
    return emit(event.trigger or event.trigger_ref, event.payload, meta={**event.meta, "re_emit_of": event.pk},
                user=user, source_event=event)
