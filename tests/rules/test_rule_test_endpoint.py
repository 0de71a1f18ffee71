"""POST /api/v1/rules/test answers for every operator of SPEC §5, including OR through `condition`."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from apps.packs.registrar import register_pack, shipped_pack_dirs

pytestmark = pytest.mark.django_db

RECENT = (datetime.now(UTC) - timedelta(seconds=30)).isoformat()
OLD = (datetime.now(UTC) - timedelta(hours=2)).isoformat()
PAYLOAD = {"severity": "critical", "host": "db-01.prod", "count": 5, "tags": ["a", "b"], "when": RECENT,
           "old": OLD, "Name": "Mixed", "items": [{"state": "up", "n": 1}, {"state": "down", "n": 7}]}

# (operator, key, pattern, expected) — each operator (and alias) with a match and a miss.
CASES = [
    ("equals", "payload.severity", "critical", True), ("eq", "payload.severity", "info", False),
    ("nequals", "payload.severity", "info", True), ("neq", "payload.severity", "critical", False),
    ("iequals", "payload.Name", "mixed", True), ("iequals", "payload.Name", "other", False),
    ("contains", "payload.host", "prod", True), ("contains", "payload.tags", "c", False),
    ("ncontains", "payload.host", "dev", True), ("ncontains", "payload.tags", "a", False),
    ("icontains", "payload.Name", "MIX", True), ("icontains", "payload.Name", "zzz", False),
    ("incontains", "payload.Name", "zzz", True), ("incontains", "payload.Name", "MIX", False),
    ("startswith", "payload.host", "db-", True), ("startswith", "payload.host", "web", False),
    ("istartswith", "payload.host", "DB-", True), ("istartswith", "payload.host", "WEB", False),
    ("endswith", "payload.host", ".prod", True), ("endswith", "payload.host", ".dev", False),
    ("iendswith", "payload.host", ".PROD", True), ("iendswith", "payload.host", ".DEV", False),
    ("lessthan", "payload.count", 10, True), ("lt", "payload.count", 5, False),
    ("greaterthan", "payload.count", 3, True), ("gt", "payload.count", 5, False),
    ("matchwildcard", "payload.host", "db-*.prod", True), ("matchwildcard", "payload.host", "web-*", False),
    ("regex", "payload.host", "^db-[0-9]+", True), ("regex", "payload.host", "^web", False),
    ("iregex", "payload.host", "^DB-", True), ("iregex", "payload.host", "^WEB", False),
    ("timediff_lt", "payload.when", 600, True), ("timediff_lt", "payload.old", 600, False),
    ("timediff_gt", "payload.old", 600, True), ("timediff_gt", "payload.when", 600, False),
    ("exists", "payload.count", None, True), ("exists", "payload.missing", None, False),
    ("nexists", "payload.missing", None, True), ("nexists", "payload.count", None, False),
    ("inside", "payload.severity", ["critical", "major"], True), ("in", "payload.severity", ["minor"], False),
    ("ninside", "payload.severity", ["minor"], True), ("nin", "payload.severity", ["critical"], False),
]


@pytest.fixture
def core(db):
    for path in shipped_pack_dirs():
        register_pack(path)


def rule(criteria, **extra):
    return {"trigger": "core.webhook", "action": "core.echo", "criteria": criteria,
            "action_params": {"message": "{{ payload.host }} x{{ payload.count }}"}, **extra}


@pytest.mark.parametrize("op,key,pattern,expected", CASES, ids=[f"{c[0]}-{c[3]}" for c in CASES])
def test_every_operator(admin_api, core, op, key, pattern, expected):
    criterion = {"type": op} if pattern is None else {"type": op, "pattern": pattern}
    answer = admin_api.post("/api/v1/rules/test", {"rule": rule({key: criterion}), "payload": PAYLOAD},
                            format="json")
    assert answer.status_code == 200, answer.content
    body = answer.json()
    assert body["matched"] is expected
    assert body["criteria"][0]["key"] == key and body["criteria"][0]["matched"] is expected
    assert body["parameters"] == ({"message": "db-01.prod x5"} if expected else None)


@pytest.mark.parametrize("condition,expected", [("any", True), ("all", False), ("any2any", True), ("all2any", True)])
def test_search_over_a_list(admin_api, core, condition, expected):
    criteria = {"payload.items": {"type": "search", "condition": condition, "pattern": {
        "item.state": {"type": "equals", "pattern": "down"}, "item.n": {"type": "greaterthan", "pattern": 5}}}}
    if condition == "all2any":
        criteria["payload.items"]["pattern"]["item.n"] = {"type": "greaterthan", "pattern": 0}
    body = admin_api.post("/api/v1/rules/test", {"rule": rule(criteria), "payload": PAYLOAD}, format="json").json()
    assert body["matched"] is expected


def test_missing_key_fails_every_operator_but_nexists(admin_api, core):
    for op in ("equals", "contains", "lessthan", "regex", "exists", "inside"):
        body = admin_api.post("/api/v1/rules/test", {"rule": rule({"payload.nope": {"type": op, "pattern": "x"}}),
                                                     "payload": PAYLOAD}, format="json").json()
        assert body["matched"] is False, op


@pytest.mark.parametrize("payload,expected", [({"count": 5, "force": False}, True), ({"count": 1, "force": True}, True),
                                              ({"count": 1, "force": False}, False)])
def test_or_through_condition(admin_api, core, payload, expected):
    body = admin_api.post("/api/v1/rules/test", {"rule": rule({}, condition="{{ payload.count > 3 or payload.force }}"),
                                                 "payload": {**payload, "host": "h"}}, format="json").json()
    assert body["condition"] is expected and body["matched"] is expected


def test_stored_rule_by_ref_and_errors(admin_api, core):
    created = admin_api.post("/api/v1/rules", {"pack": "core", "name": "stored", **rule(
        {"payload.severity": {"type": "eq", "pattern": "critical"}})}, format="json")
    assert created.status_code == 201
    body = admin_api.post("/api/v1/rules/test", {"rule": "core.stored", "payload": PAYLOAD}, format="json").json()
    assert body["matched"] is True and body["parameters"] == {"message": "db-01.prod x5"}
    missing = admin_api.post("/api/v1/rules/test", {"rule": "core.nope", "payload": {}}, format="json")
    assert missing.status_code == 400 and "rule" in missing.json()
    bad = admin_api.post("/api/v1/rules/test", {"rule": rule({"payload.x": {"type": "near", "pattern": 1}}),
                                                "payload": {}}, format="json")
    assert bad.status_code == 400 and "criteria" in str(bad.json())
    template_error = admin_api.post("/api/v1/rules/test", {"rule": rule({}, action_params={
        "message": "{{ payload.absent }}"}), "payload": {}}, format="json").json()
    assert template_error["matched"] is True and "absent" in template_error["error"]
    assert admin_api.post("/api/v1/rules/test", {"rule": "core.stored", "payload": PAYLOAD}, format="json").status_code == 200
