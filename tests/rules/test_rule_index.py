"""The per-trigger rule index narrows candidates by equality without changing what matches."""
from __future__ import annotations

from apps.rules.engine import RuleIndex, evaluate, event_context
from apps.rules.models import Rule
from apps.rules.operators import criteria_match


def rule(pk, criteria, condition=""):
    r = Rule(id=pk, name=f"r{pk}", criteria=criteria, condition=condition)
    r.ref = f"p.r{pk}"
    return r


def matching(index, payload):
    event = {"id": 1, "trigger": "p.t", "created": "now", "payload": payload, "meta": {}}
    ctx = event_context(payload, event=event)
    return [r.pk for r in index.candidates(ctx) if evaluate(r, payload, event, context=ctx, detailed=False)["matched"]]


def brute_force(rules, payload):
    event = {"id": 1, "trigger": "p.t", "created": "now", "payload": payload, "meta": {}}
    return [r.pk for r in rules if evaluate(r, payload, event, detailed=False)["matched"]]


RULES = [
    rule(1, {"payload.host": {"type": "equals", "pattern": "db-1"}}),
    rule(2, {"payload.host": {"type": "eq", "pattern": "db-2"}, "payload.sev": {"type": "regex", "pattern": "^c"}}),
    rule(3, {"payload.sev": {"type": "equals", "pattern": "critical"}}),
    rule(4, {"payload.host": {"type": "startswith", "pattern": "db-"}}),
    rule(5, {}),
    rule(6, {"payload.host": {"type": "equals", "pattern": "{{ kv.system.h }}"}}),  # templated: never indexed
    rule(7, {"payload.count": {"type": "equals", "pattern": 3}}),
]


def test_index_gives_the_same_answers_as_evaluating_every_rule():
    index = RuleIndex(RULES)
    assert [r.pk for r in index.always] == [4, 5, 6]
    for payload in ({"host": "db-1", "sev": "critical"}, {"host": "db-2", "sev": "crit"}, {"host": "web"},
                    {"host": ["db-1"]}, {"count": 3}, {"count": 3.0}, {}, {"sev": "critical", "count": "3"}):
        expected = [pk for pk in brute_force(RULES, payload) if pk != 6]
        assert [pk for pk in matching(index, payload) if pk != 6] == expected, payload


def test_compiled_criteria_give_the_same_verdicts():
    index = RuleIndex(RULES)
    assert index.matchers[6] is None  # templated pattern: rendered per event, never compiled
    for payload in ({"host": "db-1", "sev": "critical"}, {"host": "db-2", "sev": "crit"}, {"host": "web"},
                    {"host": ["db-1"]}, {"count": 3}, {"count": "3"}, {}, {"host": None},
                    {"host": "db-2", "sev": 7}, {"host": "db-2", "sev": "Crit"}):
        ctx = event_context(payload, event={"id": 1, "trigger": "p.t", "created": "now", "payload": payload})
        memo = {}  # shared by every rule of the event, as the engine does
        for r in RULES:
            if index.matchers[r.pk] is not None:
                assert index.matchers[r.pk](ctx) is criteria_match(r.criteria, ctx), (r.pk, payload)
                assert index.matchers[r.pk](ctx, memo) is criteria_match(r.criteria, ctx), (r.pk, payload)


def test_candidates_are_few_when_rules_differ_by_equality():
    many = [rule(i, {"payload.host": {"type": "equals", "pattern": f"db-{i}"}}) for i in range(1, 1001)]
    index = RuleIndex(many)
    payload = {"host": "db-500"}
    ctx = event_context(payload, event={"id": 1, "trigger": "p.t", "created": "now", "payload": payload})
    assert [r.pk for r in index.candidates(ctx)] == [500]


def test_stale_events_are_re_sent_at_most_once_per_period(db, monkeypatch):
    from datetime import timedelta

    from django.utils import timezone

    from apps.rules import recovery
    from apps.triggers.models import Event
    from tests.factories import EventFactory

    sent = []
    monkeypatch.setattr(recovery, "dispatch", sent.append)
    old = EventFactory()
    Event.objects.filter(pk=old.pk).update(created=timezone.now() - timedelta(minutes=10))
    EventFactory()  # recent: its first message is presumably still queued
    assert recovery.redispatch_stale_events(older_than=60) == 1
    assert recovery.redispatch_stale_events(older_than=60) == 0  # not again within the period
    assert sent == [old.pk]


# --- the per-process cache of rule indexes (engine.rules_for) ---------------------------------------------

import pytest  # noqa: E402

from apps.rules import engine  # noqa: E402
from tests.factories import RuleFactory  # noqa: E402


@pytest.fixture
def fresh_cache():
    engine._cache.clear()
    yield
    engine._cache.clear()


@pytest.mark.django_db
def test_cached_index_costs_no_query_until_something_changes(fresh_cache, django_assert_num_queries,
                                                             django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        first = RuleFactory()
    trigger_id = first.trigger_id
    assert [r.pk for r in engine.rules_for(trigger_id).rules] == [first.pk]
    with django_assert_num_queries(0):  # the shared generation is unchanged: no aggregate, no rebuild
        engine.rules_for(trigger_id)
    with django_capture_on_commit_callbacks(execute=True):  # a save publishes a new generation on commit
        second = RuleFactory(trigger=first.trigger, pack=first.pack, action=first.action)
    assert [r.pk for r in engine.rules_for(trigger_id).rules] == [first.pk, second.pk]
    with django_capture_on_commit_callbacks(execute=True):
        first.enabled = False
        first.save()
    assert [r.pk for r in engine.rules_for(trigger_id).rules] == [second.pk]


@pytest.mark.django_db
def test_changes_made_without_save_are_seen_after_the_recheck_interval(fresh_cache, monkeypatch,
                                                                      django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        rule = RuleFactory()
    engine.rules_for(rule.trigger_id)
    from django.utils import timezone

    Rule.objects.filter(pk=rule.pk).update(enabled=False, updated=timezone.now())  # no signal
    assert [r.pk for r in engine.rules_for(rule.trigger_id).rules] == [rule.pk]  # within the interval
    monkeypatch.setattr(engine, "RECHECK_SECONDS", 0.0)
    assert engine.rules_for(rule.trigger_id).rules == []


@pytest.mark.django_db
def test_without_the_shared_generation_every_event_checks_the_stamp(fresh_cache, django_assert_num_queries,
                                                                    django_capture_on_commit_callbacks):
    from django.core.cache import cache

    with django_capture_on_commit_callbacks(execute=True):
        rule = RuleFactory()
    engine.rules_for(rule.trigger_id)
    cache.delete(engine.GENERATION_KEY)  # evicted, or the cache is down
    with django_assert_num_queries(1):  # the aggregate only: same stamp, the index is kept
        assert [r.pk for r in engine.rules_for(rule.trigger_id).rules] == [rule.pk]
