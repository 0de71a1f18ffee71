"""Timers (SPEC §4): rules on a ``core.*timer`` trigger fire an event on a schedule held in the database.

Schedules (a rule's ``trigger_params``):

- ``core.intervaltimer`` ``{unit: seconds|minutes|hours|days, interval: <number > 0>}``. The first fire is one
  interval after the rule is created (or enabled); later fires stay on that grid (``first + k * interval``).
- ``core.crontimer`` ``{expression, timezone: UTC}``. Five fields ``minute hour day-of-month month
  day-of-week``, or six fields with **seconds first** ``second minute hour day-of-month month day-of-week``
  (the Quartz/Spring convention; ``*/10 * * * * *`` is every ten seconds). croniter's ``@hourly``/``@daily``/…
  aliases are accepted too. Evaluated in ``timezone`` (an IANA name).
- ``core.datetimetimer`` ``{fire_at, timezone: UTC}``: once, at an ISO 8601 date-time. A ``fire_at`` without an
  offset is read in ``timezone``; one with an offset ignores ``timezone``. A ``fire_at`` already past when the
  rule is saved never fires.
- ``core.rruletimer`` ``{rrule}``: RFC 5545 text, either ``DTSTART…\\nRRULE:…`` (``DTSTART`` with ``Z`` or
  ``;TZID=``; a floating ``DTSTART`` is read as UTC) or a bare ``FREQ=…`` rule. A bare rule starts at midnight
  UTC of the day the rule was created, so ``FREQ=MINUTELY;INTERVAL=5`` fires at :00, :05, … and
  ``FREQ=DAILY;BYHOUR=9`` at 09:00:00 UTC. Use ``DTSTART`` with ``COUNT``.

How firing works (ENGINEERING principle 8): ``Rule.next_fire_at`` holds each timer rule's next due time. It is
computed when the rule is saved with a new schedule (or enabled without one) and, for rules that have none, by
the scheduler job ``rules.fire_timers``, which runs every scheduler tick in every scheduler process:

1. One indexed query reads the enabled timer rules that are due (``next_fire_at <= now``) or have no due time
   yet. With no timer rules this is the whole cost of a tick.
2. For a due rule it computes the next due time *after now* (so after downtime, or when a rule is re-enabled
   after a pause, the missed period fires once, not once per missed tick) and claims the tick with
   ``UPDATE … SET next_fire_at=<next>, last_fired_at=now WHERE id=… AND enabled AND next_fire_at=<value read>``.
   Only the process whose update changed the row emits the event, in the same transaction as the claim, so a
   due time fires once however many schedulers run. The event is ``payload {executed_at: <the due time
   claimed>, schedule: <trigger_params>}``, ``meta {source: "timer", rule: <rule ref>}``; the rules engine
   matches it against that rule only.
3. When nothing is left to fire (a datetime timer that fired, an exhausted rrule) ``next_fire_at`` becomes null.

A rule saved with unchanged ``trigger_params`` keeps the scheduler's ``next_fire_at``/``last_fired_at`` even if
the instance was loaded before the last fire, so an edit never re-arms a due time that already fired.
"""
from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from dateutil import rrule as rr
from dateutil.parser import isoparse
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.db.models.signals import pre_save
from django.utils import timezone

from apps.core.periodic import register
from apps.triggers.services import emit

from .models import Rule

log = logging.getLogger("attune.rules.timers")

INTERVAL = "core.intervaltimer"
CRON = "core.crontimer"
DATETIME = "core.datetimetimer"
RRULE = "core.rruletimer"
TIMER_TRIGGERS = frozenset({INTERVAL, CRON, DATETIME, RRULE})
UNITS = ("seconds", "minutes", "hours", "days")


class TimerPayload(TypedDict):
    """The payload of a timer event (the ``payload_schema`` of every ``core.*timer`` trigger)."""

    executed_at: str  # the due time this event is for, ISO 8601 in UTC
    schedule: dict[str, Any]  # the rule's trigger_params


class TimerError(ValueError):
    """A timer's ``trigger_params`` cannot be understood; the message names the parameter."""


def is_timer(trigger_ref: str | None) -> bool:
    return trigger_ref in TIMER_TRIGGERS


# --- reading trigger_params ----------------------------------------------------------------------------------

def _zone(params: dict[str, Any]) -> ZoneInfo:
    name = params.get("timezone")
    if name is None:
        return ZoneInfo("UTC")
    if not isinstance(name, str):
        raise TimerError(f"timezone: must be an IANA time zone name such as 'Europe/Paris', not {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise TimerError(f"timezone: unknown time zone {name!r} (use an IANA name such as 'Europe/Paris')")


def _interval(params: dict[str, Any]) -> timedelta:
    unit, value = params.get("unit"), params.get("interval")
    if unit not in UNITS:
        raise TimerError(f"unit: must be one of {', '.join(UNITS)}, not {unit!r}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TimerError(f"interval: must be a number, not {value!r}")
    if not value > 0:
        raise TimerError(f"interval: must be greater than 0, not {value!r}")
    try:
        return timedelta(**{unit: value})
    except OverflowError:
        raise TimerError(f"interval: {value} {unit} is too long")


def _cron(params: dict[str, Any]) -> tuple[str, bool, ZoneInfo]:
    """(expression, seconds-first, zone)."""
    expression = params.get("expression")
    if not isinstance(expression, str) or not expression.strip():
        raise TimerError("expression: a cron expression is required, e.g. '*/5 * * * *'")
    expression = " ".join(expression.split())
    fields = expression.split(" ")
    if not expression.startswith("@") and len(fields) not in (5, 6):
        raise TimerError(
            f"expression: {expression!r} has {len(fields)} fields; use 5 (minute hour day month weekday) "
            "or 6 with seconds first (second minute hour day month weekday)"
        )
    seconds_first = len(fields) == 6
    if not croniter.is_valid(expression, second_at_beginning=seconds_first):
        raise TimerError(f"expression: {expression!r} is not a valid cron expression")
    return expression, seconds_first, _zone(params)


def _fire_at(params: dict[str, Any]) -> datetime:
    value = params.get("fire_at")
    if not isinstance(value, str) or not value.strip():
        raise TimerError("fire_at: an ISO 8601 date and time is required, e.g. '2026-01-01T09:00:00'")
    try:
        moment = isoparse(value.strip())
    except (ValueError, OverflowError):
        raise TimerError(f"fire_at: {value!r} is not an ISO 8601 date and time (e.g. '2026-01-01T09:00:00')")
    zone = _zone(params)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return moment.astimezone(UTC)


def _rrule(params: dict[str, Any], default_start: datetime) -> rr.rrule | rr.rruleset:
    text = params.get("rrule")
    if not isinstance(text, str) or not text.strip():
        raise TimerError("rrule: an RFC 5545 recurrence rule is required, e.g. 'FREQ=MINUTELY;INTERVAL=5'")
    start = default_start.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    try:
        return rr.rrulestr(text.strip(), dtstart=start, cache=False)
    except Exception as exc:  # dateutil raises ValueError, IndexError, KeyError… for bad text
        raise TimerError(f"rrule: {text!r} is not an RFC 5545 recurrence rule ({exc or type(exc).__name__})")


# --- next due time -------------------------------------------------------------------------------------------

_STEPS = {rr.WEEKLY: timedelta(weeks=1), rr.DAILY: timedelta(days=1), rr.HOURLY: timedelta(hours=1),
          rr.MINUTELY: timedelta(minutes=1), rr.SECONDLY: timedelta(seconds=1)}


def _rrule_after(rule: rr.rrule | rr.rruleset, after: datetime) -> datetime | None:
    try:
        return _rrule_after_in(rule, after.astimezone(_rrule_zone(rule) or UTC))
    except TypeError:  # a floating DTSTART: the rule is naive, read as UTC
        found = _rrule_after_in(rule, after.astimezone(UTC).replace(tzinfo=None))
        return None if found is None else found.replace(tzinfo=UTC)


def _rrule_zone(rule: rr.rrule | rr.rruleset):
    return getattr(rule, "_dtstart", None) and rule._dtstart.tzinfo


def _rrule_after_in(rule: rr.rrule | rr.rruleset, after: datetime) -> datetime | None:
    """``rule.after(after)``, without walking every occurrence since DTSTART.

    dateutil iterates from DTSTART, so a minutely rule started a year ago costs half a million steps. For a
    plain rule without COUNT whose period is fixed (weekly or shorter), moving DTSTART forward by whole
    periods (in wall-clock time, as dateutil steps) to at least one period before ``after`` yields the same
    occurrences from there on.
    """
    if isinstance(rule, rr.rrule) and rule._count is None and rule._freq in _STEPS:
        step = _STEPS[rule._freq] * rule._interval
        start = rule._dtstart
        wall = after.replace(tzinfo=None) - start.replace(tzinfo=None)
        periods = wall // step - 1
        if periods > 0:
            moved = (start.replace(tzinfo=None) + step * periods).replace(tzinfo=start.tzinfo)
            rule = rule.replace(dtstart=moved)
    return rule.after(after, inc=False)


def next_fire_time(rule_or_trigger_ref: Rule | str, trigger_params: dict[str, Any], after: datetime) -> datetime | None:
    """The first due time strictly after ``after`` (aware, UTC), or None if the timer will never fire again.

    Given a :class:`Rule`, an interval stays on the grid of the rule's current ``next_fire_at`` and a bare
    rrule starts on the rule's creation day; given a trigger ref, an interval counts from ``after`` and a bare
    rrule starts on ``after``'s day. Raises :class:`TimerError` for parameters it cannot read and ``ValueError``
    for a trigger that is not a timer.
    """
    if isinstance(rule_or_trigger_ref, Rule):
        rule: Rule | None = rule_or_trigger_ref
        trigger_ref = rule_or_trigger_ref.trigger.ref
    else:
        rule, trigger_ref = None, rule_or_trigger_ref
    if not isinstance(trigger_params, dict):
        raise TimerError("trigger_params must be an object")
    after = after.astimezone(UTC) if after.tzinfo else after.replace(tzinfo=UTC)

    if trigger_ref == INTERVAL:
        step = _interval(trigger_params)
        anchor = rule.next_fire_at if rule is not None else None
        if anchor is None:
            return after + step
        return anchor + step * ((after - anchor) // step + 1)
    if trigger_ref == CRON:
        expression, seconds_first, zone = _cron(trigger_params)
        try:
            found = croniter(expression, after.astimezone(zone), second_at_beginning=seconds_first).get_next(datetime)
        except Exception as exc:  # CroniterBadDateError: e.g. '0 0 30 2 *' never matches
            raise TimerError(f"expression: {expression!r} never matches ({exc})")
        return found.astimezone(UTC)
    if trigger_ref == DATETIME:
        moment = _fire_at(trigger_params)
        return moment if moment > after else None
    if trigger_ref == RRULE:
        created = rule.created if rule is not None and rule.created else after
        parsed = _rrule(trigger_params, created)
        try:
            found = _rrule_after(parsed, after)
        except (ValueError, TypeError, OverflowError) as exc:
            raise TimerError(f"rrule: cannot be evaluated ({exc})")
        return None if found is None else found.astimezone(UTC)
    raise ValueError(f"{trigger_ref!r} is not a timer trigger")


def timer_params_errors(trigger_ref: str, params: Any) -> list[str]:
    """What is wrong with a timer rule's ``trigger_params`` (empty when fine, or when not a timer)."""
    if not is_timer(trigger_ref):
        return []
    if not isinstance(params, dict):
        return ["trigger_params must be an object"]
    errors: list[str] = []
    readers = {INTERVAL: [_interval], CRON: [_cron, _zone], DATETIME: [_fire_at, _zone], RRULE: []}[trigger_ref]
    for read in readers:
        try:
            read(params)
        except TimerError as exc:
            errors.append(str(exc))
    if not errors:
        try:  # also catches what only evaluation shows: a cron date that never comes, a bad rrule
            next_fire_time(trigger_ref, params, timezone.now())
        except TimerError as exc:
            errors.append(str(exc))
    return list(dict.fromkeys(errors))


# --- keeping next_fire_at true when a rule is saved ----------------------------------------------------------

def _first_fire(rule: Rule, now: datetime) -> datetime | None:
    try:
        return next_fire_time(rule, rule.trigger_params, now)
    except TimerError:
        return None  # the scheduler job logs it


def _on_rule_save(sender, instance: Rule, raw: bool = False, update_fields=None, **kwargs) -> None:
    if raw or (update_fields is not None and "next_fire_at" not in update_fields):
        return
    if instance.trigger_id is None or not is_timer(instance.trigger.ref):
        instance.next_fire_at = None  # not (or no longer) a timer
        return
    old = None
    if instance.pk is not None:
        old = (Rule.objects.filter(pk=instance.pk)
               .values("trigger_id", "trigger_params", "enabled", "next_fire_at", "last_fired_at").first())
    if old is not None:
        # The scheduler owns these two: never write back a value read before its last claim.
        instance.next_fire_at, instance.last_fired_at = old["next_fire_at"], old["last_fired_at"]
    now = timezone.now()
    changed = old is None or old["trigger_id"] != instance.trigger_id or old["trigger_params"] != instance.trigger_params
    if changed:
        instance.next_fire_at = None
        instance.next_fire_at = _first_fire(instance, now) if instance.enabled else None
    elif instance.enabled and not old["enabled"] and instance.next_fire_at is None:
        instance.next_fire_at = _first_fire(instance, now)
    # Otherwise (also when re-enabled with a past next_fire_at) the scheduler fires the missed period once.


pre_save.connect(_on_rule_save, sender=Rule, dispatch_uid="rules.timers.schedule")


# --- the scheduler job ---------------------------------------------------------------------------------------

# Rules whose schedule will never fire (or cannot be read), by (id, trigger, params): not recomputed every tick.
_never: set[tuple[int, int, str]] = set()


def _schedule_key(rule: Rule) -> tuple[int, int, str]:
    return rule.pk, rule.trigger_id, json.dumps(rule.trigger_params, sort_keys=True, default=str)


@register("rules.fire_timers", every=settings.ATTUNE_SCHEDULER_TICK_SECONDS)
def fire_timers(now: datetime | None = None) -> int:
    """Arm timer rules without a due time and fire the due ones; returns how many events this process emitted."""
    now = now or timezone.now()
    candidates = list(
        Rule.objects.filter(trigger__ref__in=TIMER_TRIGGERS, enabled=True, trigger__enabled=True)
        .filter(Q(next_fire_at__lte=now) | Q(next_fire_at__isnull=True))
        .select_related("trigger")
        .order_by("next_fire_at", "id")
    )
    fired = 0
    for rule in candidates:
        try:
            if rule.next_fire_at is None:
                _arm(rule, now)
            else:
                fired += _fire(rule, now)
        except Exception:  # one broken rule never stops the others
            log.exception("timer rule %s failed", rule.ref)
    return fired


def _arm(rule: Rule, now: datetime) -> None:
    key = _schedule_key(rule)
    if key in _never:
        return
    try:
        first = next_fire_time(rule, rule.trigger_params, now)
    except TimerError as exc:
        log.error("timer rule %s will not fire: trigger_params %s", rule.ref, exc)
        first = None
    if first is None:
        if len(_never) > 10_000:
            _never.clear()
        _never.add(key)
        return
    Rule.objects.filter(pk=rule.pk, next_fire_at__isnull=True).update(next_fire_at=first)


def _fire(rule: Rule, now: datetime) -> int:
    due = rule.next_fire_at
    try:
        following = next_fire_time(rule, rule.trigger_params, now)
    except TimerError as exc:
        log.error("timer rule %s stops: trigger_params %s", rule.ref, exc)
        Rule.objects.filter(pk=rule.pk, next_fire_at=due).update(next_fire_at=None)
        return 0
    with transaction.atomic():
        claimed = Rule.objects.filter(pk=rule.pk, enabled=True, next_fire_at=due).update(
            next_fire_at=following, last_fired_at=now
        )
        if not claimed:
            return 0  # another scheduler fired this due time, or the rule changed meanwhile
        payload = TimerPayload(executed_at=due.isoformat(), schedule=rule.trigger_params)
        emit(rule.trigger, payload, meta={"source": "timer", "rule": rule.ref})
    return 1
