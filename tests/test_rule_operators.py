"""Rule criteria operators (SPEC §5): StackStorm's semantics, table-driven. No database needed."""
from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime, timedelta

import pytest

from apps.core.templating import TemplateError, render_value
from apps.rules import operators
from apps.rules.criteria import ALIASES, NO_PATTERN, OPERATORS, canonical_operator
from apps.rules.operators import (
    MISSING,
    CriterionResult,
    OperatorError,
    all_matched,
    compile_criteria,
    criteria_match,
    evaluate,
    evaluate_criteria,
    lookup,
)

NOW = datetime(2024, 6, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _pinned_now(monkeypatch):
    monkeypatch.setattr(operators, "utcnow", lambda: NOW)


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


# (value, pattern, expected) for every operator but search, keyed by canonical name; every alias runs the
# same table (see NAMES below).
CASES: dict[str, list[tuple]] = {
    "equals": [
        ("critical", "critical", True),
        ("critical", "warning", False),
        ("Critical", "critical", False),
        (5, 5, True),
        (5, "5", False),
        (1.0, 1, True),
        ([1, 2], [1, 2], True),
        ({"a": 1}, {"a": 1}, True),
        ({"a": 1}, {"a": 2}, False),
        (None, "x", False),
        (b"bytes", "bytes", True),
    ],
    "nequals": [
        ("a", "b", True),
        ("a", "a", False),
        (5, "5", True),
        (5, 5, False),
        (None, "x", True),
        ("x", None, True),
        (None, None, False),
    ],
    "iequals": [
        ("CRITICAL", "critical", True),
        ("abc", "ABC", True),
        ("crit", "critical", False),
        ("Straße", "STRASSE", True),
    ],
    "contains": [
        ("hello world", "world", True),
        ("hello", "xyz", False),
        ("Hello", "hello", False),
        (["a", "b"], "a", True),
        (["a", "b"], "c", False),
        ([1, 2], 1, True),
        ({"k": 1}, "k", True),
        ({"k": 1}, "v", False),
    ],
    "ncontains": [
        ("hello world", "world", False),
        ("hello", "xyz", True),
        (["a", "b"], "a", False),
        (["a", "b"], "c", True),
        ({"k": 1}, "k", False),
        ({"k": 1}, "v", True),
    ],
    "icontains": [
        ("Hello World", "WORLD", True),
        ("abc", "B", True),
        ("Hello", "xyz", False),
    ],
    "incontains": [
        ("Hello World", "WORLD", False),
        ("abc", "D", True),
        ("Hello", "xyz", True),
    ],
    "startswith": [
        ("db-01", "db-", True),
        ("web-01", "db-", False),
        ("DB-01", "db-", False),
        ("db", "", True),
    ],
    "istartswith": [
        ("DB-01", "db-", True),
        ("Db", "dB", True),
        ("web", "db", False),
    ],
    "endswith": [
        ("host.example.com", ".com", True),
        ("host.org", ".com", False),
        ("X.COM", ".com", False),
    ],
    "iendswith": [
        ("X.COM", ".com", True),
        ("a.Com", ".cOM", True),
        ("x.org", ".COM", False),
    ],
    "lessthan": [
        (1, 2, True),
        (2, 1, False),
        (2, 2, False),
        (1.5, 2, True),
        (-3, 0.5, True),
        ("a", "b", True),
        ("2024-01-01T00:00:00Z", "2024-06-01T00:00:00Z", True),
        ("10", "9", True),  # two strings compare as strings, as in StackStorm
    ],
    "greaterthan": [
        (2, 1, True),
        (1, 2, False),
        (2, 2, False),
        (2.5, 2, True),
        ("b", "a", True),
        ("2024-01-01", "2024-06-01", False),
    ],
    "matchwildcard": [
        ("db-01.prod", "db-*.prod", True),
        ("web-01", "db-*", False),
        ("file.TXT", "*.txt", False),
        ("a1", "a?", True),
        ("ab", "[ab]b", True),
    ],
    "regex": [
        ("db-01", "^db-", True),
        ("xdb-01", "^db-", False),
        ("the db-42 host", r"db-\d+", True),  # re.search, not anchored
        ("DB-01", "^db-", False),
        ("line1\nline2", "^line2", False),
    ],
    "iregex": [
        ("DB-01", "^db-", True),
        ("x Db-9", r"db-\d", True),
        ("web", "^db", False),
    ],
    "timediff_lt": [
        ("2024-06-01T11:59:30Z", 60, True),  # aware, 30 s ago
        ("2024-06-01T11:58:00Z", 60, False),  # 120 s ago
        ("2024-06-01T11:59:30", 60, True),  # naive means UTC
        ("2024-06-01T11:58:00", 60, False),
        ("2024-06-01T13:59:30+02:00", 60, True),  # 11:59:30Z
        ("2024-06-01T07:58:00-04:00", 60, False),  # 11:58:00Z
        (ago(30).timestamp(), 60, True),  # epoch seconds
        (int(ago(120).timestamp()), 60, False),
        ("2024-06-01T11:59:30Z", "60", True),  # numeric pattern string, as StackStorm's float(pattern)
        ("2024-06-01T12:05:00Z", 60, True),  # the future is less than a minute ago
        (ago(30), 60, True),
        ("Sat, 01 Jun 2024 11:59:30 GMT", 60, True),  # not ISO: dateutil, as StackStorm
    ],
    "timediff_gt": [
        ("2024-06-01T11:58:00Z", 60, True),
        ("2024-06-01T11:59:30Z", 60, False),
        ("2024-06-01T11:58:00", 60, True),
        ("2024-06-01T11:59:30", 60, False),
        ("2024-06-01T13:58:00+02:00", 60, True),
        (ago(120).timestamp(), 60, True),
        (int(ago(30).timestamp()), 60, False),
        ("2024-06-01", 3600, True),
        ("2024-06-01T12:05:00Z", 60, False),
    ],
    "exists": [
        ("x", None, True),
        (0, None, True),
        ("", None, True),
        (False, None, True),
        ([], None, True),
        (None, None, False),  # a JSON null does not exist, as in StackStorm
    ],
    "nexists": [
        (None, None, True),
        ("x", None, False),
        (0, None, False),
        (False, None, False),
    ],
    "inside": [
        ("a", ["a", "b"], True),
        ("c", ["a", "b"], False),
        ("world", "hello world", True),
        ("k", {"k": 1}, True),
        ("v", {"k": 1}, False),
        (1, [1, 2], True),
    ],
    "ninside": [
        ("a", ["a", "b"], False),
        ("c", ["a", "b"], True),
        ("world", "hello world", False),
        ("moon", "hello world", True),
        ("k", {"k": 1}, False),
        ("v", {"k": 1}, True),
    ],
}

NAMES = sorted(OPERATORS | set(ALIASES))
TABLE = [
    pytest.param(name, value, pattern, expected, id=f"{name}-{i}")
    for name in NAMES
    if canonical_operator(name) != "search"
    for i, (value, pattern, expected) in enumerate(CASES[canonical_operator(name)])
]


def test_table_covers_every_operator_with_matching_and_non_matching_cases():
    assert set(CASES) | {"search"} == OPERATORS
    for op, cases in CASES.items():
        assert len(cases) >= 3, op
        assert {expected for *_, expected in cases} == {True, False}, op
    assert {canonical_operator(a) for a in ALIASES} <= OPERATORS


@pytest.mark.parametrize("name,value,pattern,expected", TABLE)
def test_operator_table(name, value, pattern, expected):
    assert evaluate(name, value, pattern, {"type": name, "pattern": pattern}) is expected
    criterion = {"type": name} if name in NO_PATTERN else {"type": name, "pattern": pattern}
    [result] = evaluate_criteria({"payload.v": criterion}, {"payload": {"v": value}})
    assert (result.matched, result.error) == (expected, None)
    assert (result.key, result.type, result.value) == ("payload.v", name, value)
    assert criteria_match({"payload.v": criterion}, {"payload": {"v": value}}) is expected  # the engine's hot path
    assert compile_criteria({"payload.v": criterion})({"payload": {"v": value}}) is expected


@pytest.mark.parametrize("name", ["EQ", "Equals", "IRegex", "GT"])
def test_operator_names_are_case_insensitive(name):
    value, pattern = {"eq": ("a", "a"), "equals": ("a", "a"), "iregex": ("A", "a"), "gt": (2, 1)}[name.lower()]
    assert evaluate(name, value, pattern, {}) is True


def test_aliases_match_their_operator():
    assert canonical_operator("eq") == "equals"
    for alias, op in ALIASES.items():
        for value, pattern, expected in CASES[op]:
            assert evaluate(alias, value, pattern, {}) is evaluate(op, value, pattern, {}) is expected


# -- missing keys and nulls ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_missing_key_fails_every_operator_but_nexists(name):
    op = canonical_operator(name)
    pattern = {"item.x": {"type": "exists"}} if op == "search" else (CASES[op][0][1] if op not in NO_PATTERN else None)
    criterion = {"type": name, "pattern": pattern, "condition": "all"}
    for context in ({"payload": {"other": 1}}, {"payload": {}}, {}, {"payload": [1, 2]}, {"payload": "text"}):
        [result] = evaluate_criteria({"payload.absent.deeper": criterion}, context)
        assert result.matched is (op == "nexists"), (name, context)
        assert criteria_match({"payload.absent.deeper": criterion}, context) is (op == "nexists")
        assert compile_criteria({"payload.absent.deeper": criterion})(context) is (op == "nexists")
        assert result.value is None
        assert result.error == (None if op in NO_PATTERN else "key not found")
    assert evaluate(name, MISSING, pattern, criterion) is (op == "nexists")


@pytest.mark.parametrize("name", sorted(n for n in NAMES if canonical_operator(n) not in {"nequals", "exists", "nexists"}))
def test_null_pattern_fails_with_an_explanation(name):
    [result] = evaluate_criteria({"payload.v": {"type": name, "pattern": None, "condition": "any"}}, {"payload": {"v": "x"}})
    assert result.matched is False
    assert "needs a pattern, got null" in result.error
    with pytest.raises(OperatorError):
        evaluate(name, "x", None, {"condition": "any"})


# -- type mismatches and bad patterns: not matched, error set, never an exception -------------------------

ERRORS = [
    ("contains", 5, "5", "cannot look inside integer"),
    ("ncontains", 5, "5", "cannot look inside integer"),
    ("contains", "abc", 1, "cannot look for integer"),
    ("contains", {"a": 1}, ["unhashable"], "unhashable"),
    ("contains", None, "x", "cannot look inside null"),
    ("icontains", ["a"], "a", "needs a string value, got list"),
    ("incontains", "a", 1, "needs a string pattern, got integer"),
    ("iequals", 5, "5", "needs a string value"),
    ("startswith", 5, "5", "needs a string value"),
    ("endswith", "abc", ["c"], "needs a string pattern"),
    ("istartswith", None, "a", "needs a string value, got null"),
    ("iendswith", "a", {"a": 1}, "needs a string pattern, got mapping"),
    ("matchwildcard", "a", 1, "needs a string pattern"),
    ("lessthan", 5, "10", "compares two numbers or two strings"),
    ("lt", "5", 10, "no type coercion"),
    ("greaterthan", True, 0, "boolean"),
    ("gt", None, 1, "null"),
    ("gt", [2], [1], "list"),
    ("regex", "abc", "([unclosed", "regex error: "),
    ("iregex", "abc", "*bad", "regex error: "),
    ("regex", 42, r"\d+", "needs a string value, got integer"),
    ("timediff_lt", "not a date", 60, "not a timestamp"),
    ("timediff_gt", "2024-06-01T11:00:00Z", "soon", "needs a number of seconds"),
    ("timediff_lt", ["2024-06-01"], 60, "ISO-8601 timestamp or epoch seconds"),
    ("timediff_lt", True, 60, "got boolean"),
    ("timediff_gt", "2024-06-01T11:00:00Z", True, "got boolean"),
    ("timediff_lt", 1e20, 60, "out of range"),
    ("inside", "a", 5, "cannot look inside integer"),
    ("nin", "a", 5, "cannot look inside integer"),
    ("in", 1, "123", "cannot look for integer"),
    ("search", "not a list", {"item.x": {"type": "exists"}}, "search needs a list"),
    ("search", [1], ["item.x"], "search needs a mapping"),
]


@pytest.mark.parametrize("name,value,pattern,message", ERRORS)
def test_type_mismatch_or_bad_pattern_is_an_error_not_an_exception(name, value, pattern, message):
    [result] = evaluate_criteria({"payload.v": {"type": name, "pattern": pattern, "condition": "any"}}, {"payload": {"v": value}})
    assert result.matched is False
    assert message in result.error
    assert criteria_match({"payload.v": {"type": name, "pattern": pattern, "condition": "any"}},
                          {"payload": {"v": value}}) is False
    assert compile_criteria({"payload.v": {"type": name, "pattern": pattern, "condition": "any"}})(
        {"payload": {"v": value}}) is False
    with pytest.raises(OperatorError, match=".+"):
        evaluate(name, value, pattern, {"condition": "any"})


def test_bad_regex_reports_regex_error():
    [result] = evaluate_criteria({"payload.host": {"type": "regex", "pattern": "^db-(("}}, {"payload": {"host": "db-1"}})
    assert result.matched is False and result.error.startswith("regex error: ")
    assert result.pattern == "^db-((" and result.value == "db-1"


def test_unknown_operator_and_malformed_criteria_fail_one_criterion():
    results = evaluate_criteria(
        {"payload.a": {"type": "bogus", "pattern": 1}, "payload.b": "not a mapping", "payload.c": {"pattern": 1},
         "payload.d": {"type": "eq", "pattern": 1}},
        {"payload": {"a": 1, "b": 1, "c": 1, "d": 1}},
    )
    assert [r.matched for r in results] == [False, False, False, True]
    assert "unknown operator 'bogus'" in results[0].error
    assert "must be a mapping" in results[1].error and results[1].type == ""
    assert "unknown operator None" in results[2].error
    with pytest.raises(OperatorError, match="unknown operator"):
        evaluate("bogus", 1, 1, {})


def test_regexes_are_cached():
    operators._compile.cache_clear()
    for _ in range(3):
        assert evaluate("regex", "db-01", "^db-[0-9]+$", {}) is True
    info = operators._compile.cache_info()
    assert (info.misses, info.hits) == (1, 2)
    assert info.maxsize is not None  # bounded


# -- lookups ----------------------------------------------------------------------------------------------

DATA = {
    "payload": {
        "severity": "critical",
        "items": [{"name": "first", "tags": ["a", "b"]}, {"name": "second", "meta": None}],
        "a.b": "dotted key",
        "codes": {"200": "ok"},
        "zero": 0,
        "nothing": None,
    },
    "plain": "top",
}


@pytest.mark.parametrize(
    "key,expected",
    [
        ("payload.severity", "critical"),
        ("payload.items.0.name", "first"),
        ("payload.items.1.name", "second"),
        ("payload.items.0.tags.1", "b"),
        ("payload.items[0].tags[1]", "b"),
        ("payload.items.1.meta", None),
        ("payload.nothing", None),
        ("payload.zero", 0),
        ("payload.a.b", "dotted key"),
        ("payload.codes.200", "ok"),
        ("plain", "top"),
        ("payload.severity#2", "critical"),
        ("payload.items.2.name", MISSING),
        ("payload.items.-1.name", MISSING),
        ("payload.items.first", MISSING),
        ("payload.severity.x", MISSING),
        ("payload.items.1.meta.x", MISSING),
        ("payload.nope", MISSING),
        ("nope", MISSING),
        ("", MISSING),
    ],
)
def test_lookup(key, expected):
    assert lookup(DATA, key) is expected if expected is MISSING or expected is None else lookup(DATA, key) == expected


def test_lookup_prefers_nested_path_and_falls_back_to_dotted_keys():
    assert lookup({"a": {"b": 1}, "a.b": 2}, "a.b") == 1
    assert lookup({"a": {"c": 1}, "a.b": 2}, "a.b") == 2
    assert lookup({"a": {"b.c": {"d": 3}}}, "a.b.c.d") == 3
    assert lookup([{"x": 1}], "0.x") == 1
    assert lookup("text", "x") is MISSING
    assert lookup(DATA, None) is MISSING
    assert not MISSING and repr(MISSING) == "MISSING"


def test_nested_lookups_in_criteria():
    results = evaluate_criteria(
        {
            "payload.items.0.name": {"type": "eq", "pattern": "first"},
            "payload.items.0.tags": {"type": "contains", "pattern": "b"},
            "trigger.items.1.name": {"type": "startswith", "pattern": "sec"},
            "payload.items.5.name": {"type": "nexists"},
        },
        {"payload": DATA["payload"], "trigger": DATA["payload"]},
    )
    assert [r.matched for r in results] == [True, True, True, True]
    assert all_matched(results)


def test_hash_suffix_tests_the_same_field_twice():
    results = evaluate_criteria(
        {"payload.n#1": {"type": "gt", "pattern": 40}, "payload.n#2": {"type": "lt", "pattern": 50}},
        {"payload": {"n": 42}},
    )
    assert [(r.key, r.value, r.matched) for r in results] == [("payload.n#1", 42, True), ("payload.n#2", 42, True)]


# -- search -----------------------------------------------------------------------------------------------

FIELDS = [
    {"field_name": "Status", "to_value": "Approved"},
    {"field_name": "Assigned to", "to_value": "Stanley"},
]
STATUS_APPROVED = {"item.field_name": {"type": "equals", "pattern": "Status"},
                   "item.to_value": {"type": "equals", "pattern": "Approved"}}
STATUS_STANLEY = {"item.field_name": {"type": "equals", "pattern": "Status"},
                  "item.to_value": {"type": "equals", "pattern": "Stanley"}}
NOTHING = {"item.field_name": {"type": "equals", "pattern": "Nope"},
           "item.to_value": {"type": "equals", "pattern": "Nope"}}
EVERY_ITEM = {"item.field_name": {"type": "exists"}, "item.to_value": {"type": "regex", "pattern": "^[AS]"}}


@pytest.mark.parametrize(
    "condition,pattern,expected",
    [
        # any: some item matches every sub-criterion
        ("any", STATUS_APPROVED, True),
        ("any", STATUS_STANLEY, False),
        ("any", NOTHING, False),
        # all: every item matches every sub-criterion
        ("all", EVERY_ITEM, True),
        ("all", STATUS_APPROVED, False),
        ("all", STATUS_STANLEY, False),
        # any2any: some item matches some sub-criterion
        ("any2any", STATUS_STANLEY, True),
        ("any2any", {**NOTHING, "item.to_value": {"type": "eq", "pattern": "Stanley"}}, True),
        ("any2any", NOTHING, False),
        # all2any: every item matches some sub-criterion
        ("all2any", STATUS_STANLEY, True),
        ("all2any", EVERY_ITEM, True),
        ("all2any", STATUS_APPROVED, False),
        ("all2any", NOTHING, False),
    ],
)
def test_search_conditions(condition, pattern, expected):
    criterion = {"type": "search", "condition": condition, "pattern": pattern}
    [result] = evaluate_criteria({"payload.fields": criterion}, {"payload": {"fields": FIELDS}})
    assert result.matched is expected
    assert result.error is None
    assert result.value == FIELDS
    assert evaluate("search", FIELDS, pattern, criterion) is expected


@pytest.mark.parametrize("condition,expected", [("any", False), ("any2any", False), ("all", True), ("all2any", True)])
def test_search_on_an_empty_list_follows_python_any_all(condition, expected):
    assert evaluate("search", [], STATUS_APPROVED, {"condition": condition}) is expected


def test_search_treats_a_mapping_as_a_one_item_list():
    assert evaluate("search", FIELDS[0], STATUS_APPROVED, {"condition": "all"}) is True
    assert evaluate("search", FIELDS[1], STATUS_APPROVED, {"condition": "any"}) is False


def test_search_over_scalars_nested_searches_and_hash_keys():
    assert evaluate("search", [3, 45, 7], {"item": {"type": "gt", "pattern": 40}}, {"condition": "any"}) is True
    assert evaluate("search", [3, 45, 7], {"item": {"type": "gt", "pattern": 40}}, {"condition": "all"}) is False
    between = {"item.n#1": {"type": "gt", "pattern": 40}, "item.n#2": {"type": "lt", "pattern": 50}}
    assert evaluate("search", [{"n": 42}, {"n": 60}], between, {"condition": "any"}) is True
    assert evaluate("search", [{"n": 42}, {"n": 60}], between, {"condition": "all"}) is False
    assert evaluate("search", [{"n": 42}, {"n": 60}], between, {"condition": "all2any"}) is True
    nested = {"item.tags": {"type": "search", "condition": "any", "pattern": {"item": {"type": "eq", "pattern": "db"}}}}
    hosts = [{"tags": ["web"]}, {"tags": ["db", "prod"]}]
    assert evaluate("search", hosts, nested, {"condition": "any"}) is True
    assert evaluate("search", hosts, nested, {"condition": "all"}) is False


def test_search_missing_fields_in_items_do_not_match_and_do_not_raise():
    pattern = {"item.to_value": {"type": "eq", "pattern": "Approved"}}
    items = [{"field_name": "x"}, {"to_value": "Approved"}]
    assert evaluate("search", items, pattern, {"condition": "any"}) is True
    [result] = evaluate_criteria({"payload.f": {"type": "search", "condition": "all", "pattern": pattern}},
                                 {"payload": {"f": items}})
    assert (result.matched, result.error) == (False, None)
    absent = {"item.gone": {"type": "nexists"}}
    assert evaluate("search", items, absent, {"condition": "all"}) is True


def test_search_reports_a_sub_criterion_error():
    pattern = {"item.name": {"type": "regex", "pattern": "(["}}
    [result] = evaluate_criteria({"payload.f": {"type": "search", "condition": "any", "pattern": pattern}},
                                 {"payload": {"f": [{"name": "a"}, {"name": "b"}]}})
    assert result.matched is False
    assert result.error.startswith("item 0, item.name: regex error: ")
    bad_types = {"item": {"type": "contains", "pattern": "x"}}
    [result] = evaluate_criteria({"payload.f": {"type": "search", "condition": "all", "pattern": bad_types}},
                                 {"payload": {"f": ["xy", 5]}})
    assert (result.matched, result.error) == (False, "item 1, item: contains: cannot look inside integer 5")
    # An error on an item that does not decide the outcome is not reported.
    [result] = evaluate_criteria({"payload.f": {"type": "search", "condition": "any", "pattern": bad_types}},
                                 {"payload": {"f": [5, "xy"]}})
    assert (result.matched, result.error) == (True, None)


@pytest.mark.parametrize("condition", [None, "some", "ANY"])
def test_search_with_an_unknown_condition_fails(condition):
    criterion = {"type": "search", "condition": condition, "pattern": STATUS_APPROVED}
    [result] = evaluate_criteria({"payload.fields": criterion}, {"payload": {"fields": FIELDS}})
    assert result.matched is False and "search condition must be one of" in result.error
    with pytest.raises(OperatorError):
        evaluate("search", FIELDS, STATUS_APPROVED, criterion)


# -- rendering --------------------------------------------------------------------------------------------

CONTEXT = {"payload": {"count": 7, "host": "db-01", "fields": FIELDS}, "kv": {"system": {"threshold": 5, "prefix": "db-"}}}


def render(value):
    return render_value(value, CONTEXT)


def test_patterns_are_rendered_before_comparison():
    results = evaluate_criteria(
        {
            "payload.count": {"type": "gt", "pattern": "{{ kv.system.threshold }}"},
            "payload.host": {"type": "startswith", "pattern": "{{ kv.system.prefix }}"},
            "payload.host#2": {"type": "regex", "pattern": "^{{ kv.system.prefix }}\\d+$"},
            "payload.fields": {"type": "search", "condition": "any",
                               "pattern": {"item.to_value": {"type": "eq", "pattern": "{{ 'Appro' ~ 'ved' }}"}}},
        },
        CONTEXT,
        render,
    )
    assert [(r.pattern, r.matched) for r in results][:3] == [(5, True), ("db-", True), ("^db-\\d+$", True)]
    assert results[3].matched is True
    assert results[3].pattern == {"item.to_value": {"type": "eq", "pattern": "Approved"}}


def test_without_render_patterns_are_used_as_written():
    [result] = evaluate_criteria({"payload.host": {"type": "eq", "pattern": "{{ kv.system.prefix }}"}}, CONTEXT)
    assert (result.pattern, result.matched) == ("{{ kv.system.prefix }}", False)


def test_render_error_fails_only_that_criterion():
    results = evaluate_criteria(
        {
            "payload.count": {"type": "gt", "pattern": "{{ kv.system.missing_key.x }}"},
            "payload.host": {"type": "eq", "pattern": "db-01"},
            "payload.fields": {"type": "search", "condition": "any",
                               "pattern": {"item.to_value": {"type": "eq", "pattern": "{{ nope }}"}}},
        },
        CONTEXT,
        render,
    )
    assert [r.matched for r in results] == [False, True, False]
    assert results[0].error.startswith("render error: ") and "missing_key" in results[0].error
    assert results[0].pattern == "{{ kv.system.missing_key.x }}" and results[0].value == 7
    assert results[2].error.startswith("render error: ") and "nope" in results[2].error
    assert not all_matched(results)


def test_render_is_not_asked_for_exists_or_null_patterns():
    seen = []

    def recording(value):
        seen.append(value)
        raise TemplateError("boom")

    results = evaluate_criteria(
        {"payload.host": {"type": "exists"}, "payload.count": {"type": "nexists", "pattern": "{{ x }}"},
         "payload.other": {"type": "neq", "pattern": None}},
        CONTEXT, recording,
    )
    assert [r.matched for r in results] == [True, False, False]
    assert seen == []
    [result] = evaluate_criteria({"payload.host": {"type": "eq", "pattern": "x"}}, CONTEXT, recording)
    assert (result.matched, result.error) == (False, "render error: boom")


# -- results ----------------------------------------------------------------------------------------------

def test_results_follow_criteria_order_and_serialise():
    criteria = {
        "payload.z": {"type": "eq", "pattern": 1},
        "payload.a": {"type": "regex", "pattern": "(("},
        "payload.m": {"type": "nexists"},
        "payload.b": {"type": "in", "pattern": [1, 2]},
        "payload.absent": {"type": "neq", "pattern": 3},
    }
    results = evaluate_criteria(criteria, {"payload": {"z": 1, "a": "x", "b": 2}})
    assert [r.key for r in results] == list(criteria)
    assert [r.type for r in results] == ["eq", "regex", "nexists", "in", "neq"]
    assert [r.matched for r in results] == [True, False, True, True, False]
    assert all(isinstance(r, CriterionResult) for r in results)
    assert all(r.error is None for r in results if r.matched)
    assert json.loads(json.dumps([asdict(r) for r in results]))[1]["error"].startswith("regex error")


def test_all_matched():
    assert all_matched([]) is True
    assert evaluate_criteria(None, {}) == [] and evaluate_criteria({}, {}) == []
    ok = CriterionResult("k", "eq", 1, 1, True)
    bad = CriterionResult("k", "eq", 1, 2, False)
    assert all_matched([ok, ok]) is True
    assert all_matched([ok, bad]) is False
    assert all_matched(iter([ok])) is True


def test_an_unexpected_operator_bug_fails_the_criterion_not_the_event(monkeypatch):
    def broken(*args):
        raise RuntimeError("bug")

    monkeypatch.setattr(operators, "_binary", broken)
    [result] = evaluate_criteria({"payload.x": {"type": "eq", "pattern": 1}}, {"payload": {"x": 1}})
    assert (result.matched, result.error) == (False, "RuntimeError: bug")


def test_utcnow_is_aware_and_current(monkeypatch):
    monkeypatch.undo()
    now = operators.utcnow()
    assert now.tzinfo is not None
    assert abs((datetime.now(UTC) - now).total_seconds()) < 5
    assert evaluate("timediff_lt", datetime.now(UTC).isoformat(), 60, {}) is True
    assert evaluate("timediff_gt", "2000-01-01T00:00:00", 60, {}) is True
