"""The per-trigger rule index narrows candidates by equality without changing what matches."""
from __future__ import annotations

from apps.rules.engine import RuleIndex, evaluate, event_context
from apps.rules.models import Rule


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
