"""The event pump: events are matched in batches by ``attune.rules.process_events``, published by
``triggers.services.wake`` only when no pump is pending — a burst costs a handful of messages, not one per
event — and nothing committed is ever left behind (the flag is cleared only after an empty batch, then the
pump looks once more)."""
from __future__ import annotations

import pytest
from celery.signals import before_task_publish

from apps.executions.models import Execution
from apps.rules import engine
from apps.rules.models import Enforcement
from apps.triggers import services as trigger_services
from apps.triggers.models import Event, EventStatus
from attune.celery import app as celery_app
from tests.factories import RuleFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def published():
    """The names of the tasks published meanwhile; the queues are emptied afterwards (no worker runs them)."""
    names: list[str] = []

    def capture(sender=None, **kwargs):
        names.append(sender)

    before_task_publish.connect(capture, weak=False)
    trigger_services.clear_pump_flag()
    yield names
    before_task_publish.disconnect(capture)
    trigger_services.clear_pump_flag()
    with celery_app.connection_for_write() as connection:
        for queue in ("attune", trigger_services.EVENTS_QUEUE):
            connection.default_channel.queue_purge(queue)


def before_each_match(monkeypatch, hook):
    """Run ``hook(event)`` before the engine matches each event (it may raise, as a broken rule path would)."""
    match = engine._match

    def wrapped(event, seen, indexes=None):
        hook(event)
        return match(event, seen, indexes)

    monkeypatch.setattr(engine, "_match", wrapped)


def emit_committed(trigger, payloads, capture):
    events = []
    for payload in payloads:
        with capture(execute=True):  # each event in its own transaction, its wake() after the commit
            events.append(trigger_services.emit(trigger, payload))
    return events


def test_a_burst_publishes_one_pump_which_matches_every_event(published, django_capture_on_commit_callbacks):
    rule = RuleFactory()
    with django_capture_on_commit_callbacks(execute=True):
        rule.save()  # the rule index's generation
    payloads = [{"severity": "critical" if i % 2 == 0 else "info", "host": f"h{i}"} for i in range(30)]
    events = emit_committed(rule.trigger, payloads, django_capture_on_commit_callbacks)
    assert published.count(trigger_services.PROCESS_EVENTS_TASK) == 1  # not one message per event
    with django_capture_on_commit_callbacks(execute=True):
        assert engine.pump() == 30
    assert set(Event.objects.filter(pk__in=[e.pk for e in events]).values_list("status", flat=True)) == {
        EventStatus.PROCESSED}
    assert Enforcement.objects.filter(rule=rule).count() == 15  # the critical ones
    assert Execution.objects.filter(rule=rule).count() == 15
    # the pump emptied the backlog and cleared its flag: the next event publishes a new pump
    emit_committed(rule.trigger, [{"severity": "info"}], django_capture_on_commit_callbacks)
    assert published.count(trigger_services.PROCESS_EVENTS_TASK) == 2


def test_an_event_committed_while_the_pump_ends_is_not_left_behind(published, monkeypatch,
                                                                   django_capture_on_commit_callbacks):
    rule = RuleFactory()
    emit_committed(rule.trigger, [{"severity": "info"}], django_capture_on_commit_callbacks)
    late: list[Event] = []
    clear = trigger_services.clear_pump_flag

    def event_then_clear():
        # committed after the pump's last (empty) batch, while its flag still stood: this wake() publishes
        # nothing, so the pump itself must find the event
        if not late:
            late.extend(emit_committed(rule.trigger, [{"severity": "info", "late": True}],
                                       django_capture_on_commit_callbacks))
        clear()

    monkeypatch.setattr(trigger_services, "clear_pump_flag", event_then_clear)
    assert engine.pump() == 2
    assert published.count(trigger_services.PROCESS_EVENTS_TASK) == 1
    assert Event.objects.get(pk=late[0].pk).status == EventStatus.PROCESSED


def test_an_event_whose_matching_fails_stays_received_and_the_rest_go_on(published, monkeypatch,
                                                                         django_capture_on_commit_callbacks):
    rule = RuleFactory()
    events = emit_committed(rule.trigger, [{"severity": "info", "n": i} for i in range(5)],
                            django_capture_on_commit_callbacks)
    poison = events[2].pk

    def failing(event):
        if event.pk == poison:
            raise RuntimeError("boom")

    before_each_match(monkeypatch, failing)
    assert engine.pump() == 5  # taken once each, and the pump ends (no retry loop on the bad one)
    statuses = dict(Event.objects.filter(pk__in=[e.pk for e in events]).values_list("id", "status"))
    assert statuses.pop(poison) == EventStatus.RECEIVED  # left for the re-dispatch job
    assert set(statuses.values()) == {EventStatus.PROCESSED}


def test_batches_follow_event_order_and_size(published, monkeypatch, django_capture_on_commit_callbacks):
    rule = RuleFactory()
    events = emit_committed(rule.trigger, [{"severity": "info", "n": i} for i in range(7)],
                            django_capture_on_commit_callbacks)
    order: list[int] = []
    before_each_match(monkeypatch, lambda event: order.append(event.pk))
    monkeypatch.setattr(engine, "PUMP_BATCH", 3)
    monkeypatch.setattr(engine, "PUMP_BATCH_SQLITE", 3)
    assert engine.process_pending(limit=3) == (3, [])
    assert engine.pump() == 4
    assert order == [e.pk for e in events]  # oldest first, each once


def test_a_batch_that_fails_whole_clears_the_flag_and_keeps_its_events(published, monkeypatch,
                                                                      django_capture_on_commit_callbacks):
    rule = RuleFactory()
    (event,) = emit_committed(rule.trigger, [{"severity": "info"}], django_capture_on_commit_callbacks)

    def broken(*args, **kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(engine, "_mark_processed", broken)
    with pytest.raises(RuntimeError):
        engine.pump()
    assert Event.objects.get(pk=event.pk).status == EventStatus.RECEIVED
    emit_committed(rule.trigger, [{"severity": "info"}], django_capture_on_commit_callbacks)
    assert published.count(trigger_services.PROCESS_EVENTS_TASK) == 2  # the flag did not block a new pump


def test_an_idle_pump_lingers_and_takes_what_comes_meanwhile(published, monkeypatch,
                                                            django_capture_on_commit_callbacks):
    import time

    rule = RuleFactory()
    emit_committed(rule.trigger, [{"severity": "info"}], django_capture_on_commit_callbacks)
    arrivals: list[Event] = []
    real_sleep = time.sleep

    def sleep_then_arrive(seconds):
        assert seconds <= engine.PUMP_POLL_SECONDS
        if not arrivals:  # an event while the pump waits: its flag still stands, nothing is published
            arrivals.extend(emit_committed(rule.trigger, [{"severity": "info", "n": 2}],
                                           django_capture_on_commit_callbacks))
        real_sleep(seconds)

    monkeypatch.setattr(engine.time, "sleep", sleep_then_arrive)
    assert engine.pump() == 2
    assert published.count(trigger_services.PROCESS_EVENTS_TASK) == 1
    assert Event.objects.get(pk=arrivals[0].pk).status == EventStatus.PROCESSED


def test_an_older_event_committed_after_a_newer_one_is_not_passed_over(published,
                                                                      django_capture_on_commit_callbacks):
    """Ids are given at INSERT, visibility at COMMIT: a batch always starts from the oldest received event."""
    rule = RuleFactory()
    older, newer = emit_committed(rule.trigger, [{"n": 1}, {"n": 2}], django_capture_on_commit_callbacks)
    Event.objects.filter(pk=older.pk).update(status=EventStatus.INVALID)  # "not yet visible"
    assert engine.process_pending() == (1, [])  # the newer one
    Event.objects.filter(pk=older.pk).update(status=EventStatus.RECEIVED)  # "commits" now
    assert engine.process_pending() == (1, [])
    assert set(Event.objects.filter(pk__in=[older.pk, newer.pk]).values_list("status", flat=True)) == {
        EventStatus.PROCESSED}
