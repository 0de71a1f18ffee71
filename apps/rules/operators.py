"""Rule criteria evaluation: StackStorm's operators (SPEC §5).

Modelled on ``st2common/st2common/operators.py`` and ``st2reactor/st2reactor/rules/filter.py`` of StackStorm.

API
    ``lookup(data, key)``             value at a dotted path, or ``MISSING``
    ``evaluate(op, value, pattern, criterion)``   one operator; raises ``OperatorError`` when it cannot compare
    ``evaluate_criteria(criteria, context, render)``  one ``CriterionResult`` per criterion, in criteria order
    ``all_matched(results)``          criteria are ANDed (no criteria matches)

Keys
    A key is a dotted path into the template context (``payload.x``, ``trigger.x``, ``event.id``). A segment that
    is a non-negative integer indexes a list (``payload.items.0.name``; ``payload.items[0].name`` is accepted too).
    A mapping key that itself contains dots is found as well (``payload.a.b`` reaches ``{"a.b": 1}`` when there
    is no ``a`` holding ``b``). As in StackStorm, anything after ``#`` is ignored, so ``payload.x#2`` tests the
    same field twice; the result keeps the key as written.

Semantics (StackStorm's, with the differences listed)
    * A missing key fails every operator but ``nexists`` (``error`` says "key not found", except for ``exists``
      and ``nexists``, where a missing key is an ordinary answer). StackStorm looks a missing key up as None, so
      there ``nequals`` and ``ncontains`` could match a missing key; SPEC §5 says they fail, and here they do.
    * ``exists``/``nexists`` are StackStorm's ``value is not None`` / ``value is None``: a key present with a
      JSON null counts as not existing.
    * A null pattern fails every operator but ``nequals``, ``exists`` and ``nexists`` (StackStorm returns False;
      here ``error`` also says why).
    * ``contains``/``ncontains`` are ``pattern in value`` / ``pattern not in value`` (substring for strings,
      membership for lists, key for mappings); ``inside``/``ninside`` are ``value in pattern`` and its negation.
      The ``i`` variants (``iequals``, ``icontains``, ``incontains``, ``istartswith``, ``iendswith``, ``iregex``)
      and ``startswith``, ``endswith``, ``matchwildcard``, ``regex`` need strings on both sides, as StackStorm
      (which calls ``.lower()``/``.startswith()`` on them) effectively does. Case-insensitive means
      ``str.casefold`` (StackStorm: ``str.lower``; they differ only for a few letters such as "ß").
    * Any comparison Python cannot make (``contains`` on an integer, ``"a" in 5``...) is not a match and
      ``error`` explains it: never an exception, never a match. In particular the negated operators
      (``nequals`` aside) do not match when the comparison is impossible — as in StackStorm, where the
      TypeError makes the criterion fail.
    * ``lessthan``/``greaterthan`` are ``value < pattern`` / ``value > pattern`` with NO type coercion, like
      StackStorm (``less_than`` is plain ``value < criteria_pattern``): two numbers compare numerically, two
      strings compare as strings (so ISO-8601 timestamps order correctly, but ``"10" < "9"``). Anything else —
      a number against a numeric string such as ``"5"``, booleans, null, lists — is rejected with an error
      naming both types. (StackStorm raises TypeError there under Python 3, i.e. the criterion fails too;
      booleans, which StackStorm would compare as 0/1, are rejected here.) Templated patterns keep their JSON
      type when the template is the whole value, so ``"{{ kv.system.threshold }}"`` gives a number.
    * ``matchwildcard`` is ``fnmatch`` — case-sensitive on every platform (``fnmatchcase``; StackStorm's
      ``fnmatch`` is case-sensitive on Linux). ``regex``/``iregex`` are ``re.search`` (unanchored, as in
      StackStorm), without/with ``re.IGNORECASE``. Compiled regexes are kept in a small LRU cache. An invalid
      regex is an error ("regex error: ..."), not an exception.
    * ``timediff_lt``/``timediff_gt``: ``now - value`` in seconds is less/greater than ``pattern``. The value is an
      ISO-8601 string (naive means UTC, as StackStorm's ``date_utils.parse``; other formats fall back to
      dateutil, as StackStorm does), a ``datetime``, or an epoch number in seconds (StackStorm cannot parse
      those). The pattern is ``float(pattern)`` as in StackStorm, so ``"60"`` works. A future timestamp has a
      negative difference, so it is "less than N seconds ago".
    * ``search`` (``condition`` any | all | any2any | all2any) runs the sub-criteria of ``pattern`` against each
      item of the list at the key (a mapping counts as a one-item list, as in StackStorm); sub-criteria keys
      are looked up in ``{"item": <the item>}`` (``item.name``, or ``item`` itself for a list of scalars).
      ``any``: some item matches every sub-criterion; ``all``: every item matches every sub-criterion;
      ``any2any``: some item matches some sub-criterion; ``all2any``: every item matches some sub-criterion.
      As in StackStorm (Python's ``all``/``any``), an empty list matches ``all``/``all2any`` and fails
      ``any``/``any2any``. Sub-criteria patterns are rendered with the event's context (StackStorm renders
      them with the item's context instead). When a search does not match, ``error`` carries the first error
      met in a sub-criterion (e.g. a bad regex), prefixed with the item index and key.
    * Operator names are case-insensitive (StackStorm lowercases them); aliases are those of
      :mod:`apps.rules.criteria`. Bytes are decoded as UTF-8 before comparing (StackStorm does the same).
    * A pattern is rendered (``render``) before comparing; a rendering error fails that criterion with
      ``error`` set, the other criteria are still evaluated. Without ``render`` patterns are used as written.
"""
from __future__ import annotations

import fnmatch
import numbers
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from .criteria import SEARCH_CONDITIONS, canonical_operator

__all__ = ["MISSING", "CriterionResult", "OperatorError", "all_matched", "evaluate", "evaluate_criteria", "lookup"]

ITEM_PREFIX = "item"


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Any = _Missing()


class OperatorError(ValueError):
    """An operator could not compare its value and pattern; ``str()`` is a short explanation for people."""


@dataclass
class CriterionResult:
    key: str  # the dotted path as written, e.g. "payload.severity"
    type: str  # the operator as written (alias kept, e.g. "eq")
    pattern: Any  # after template rendering
    value: Any  # the value found at key (None when missing)
    matched: bool
    error: str | None = None  # set only when matched is False


# -- lookup -----------------------------------------------------------------------------------------------

_BRACKET_INDEX = re.compile(r"\[(\d+)\]")


@lru_cache(maxsize=8192)
def _split_cached(dotted_key: str) -> tuple[str, ...]:
    return tuple(_split(dotted_key))


def _split(dotted_key: str) -> list[str]:
    key = dotted_key.split("#", 1)[0]
    if "[" in key:
        key = _BRACKET_INDEX.sub(r".\1", key)
    return key.split(".")


def _walk(node: Any, parts: list[str]) -> Any:
    if not parts:
        return node
    if isinstance(node, dict):
        # The shortest segment first; a key holding dots ("a.b") only when the plain path finds nothing.
        for end in range(1, len(parts) + 1):
            name = parts[0] if end == 1 else ".".join(parts[:end])
            if name in node:
                found = _walk(node[name], parts[end:])
                if found is not MISSING:
                    return found
        return MISSING
    if isinstance(node, list | tuple):
        part = parts[0]
        if part.isascii() and part.isdigit():
            index = int(part)
            if index < len(node):
                return _walk(node[index], parts[1:])
    return MISSING


def lookup(data: Any, dotted_key: str) -> Any:
    """The value at ``dotted_key`` in ``data``, or ``MISSING`` when any part of the path is absent."""
    if not isinstance(dotted_key, str):
        return MISSING
    return _walk(data, _split(dotted_key))


# -- operators --------------------------------------------------------------------------------------------

def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", str: "string", int: "integer", float: "number", list: "list", dict: "mapping"}.get(
        type(value), type(value).__name__
    )


def _decode(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise OperatorError("value is bytes that are not UTF-8") from None
    return value


def _strings(op: str, value: Any, pattern: Any) -> tuple[str, str]:
    if not isinstance(value, str):
        raise OperatorError(f"{op} needs a string value, got {_type_name(value)}")
    if not isinstance(pattern, str):
        raise OperatorError(f"{op} needs a string pattern, got {_type_name(pattern)}")
    return value, pattern


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _ordered(op: str, value: Any, pattern: Any) -> tuple[Any, Any]:
    if (_is_number(value) and _is_number(pattern)) or (isinstance(value, str) and isinstance(pattern, str)):
        return value, pattern
    raise OperatorError(
        f"{op} compares two numbers or two strings, got {_type_name(value)} {value!r} and "
        f"{_type_name(pattern)} {pattern!r} (no type coercion)"
    )


def _membership(op: str, needle: Any, haystack: Any) -> bool:
    if not isinstance(haystack, str | list | tuple | dict):
        raise OperatorError(f"{op}: cannot look inside {_type_name(haystack)} {haystack!r}")
    if isinstance(haystack, str) and not isinstance(needle, str):
        raise OperatorError(f"{op}: cannot look for {_type_name(needle)} {needle!r} in a string")
    try:
        return needle in haystack
    except TypeError as exc:
        raise OperatorError(f"{op}: {exc}") from None


@lru_cache(maxsize=8192)
def _compile(pattern: str, flags: int) -> re.Pattern[str]:
    return re.compile(pattern, flags)


def _regex(value: str, pattern: str, flags: int) -> bool:
    try:
        compiled = _compile(pattern, flags)
    except re.error as exc:
        raise OperatorError(f"regex error: {exc}") from None
    return compiled.search(value) is not None


def utcnow() -> datetime:
    """Now, timezone-aware (a function so tests can pin it)."""
    return datetime.now(UTC)


def _parse_time(value: Any) -> datetime:
    if isinstance(value, datetime):
        moment = value
    elif _is_number(value):
        try:
            return datetime.fromtimestamp(float(value), UTC)
        except (OverflowError, OSError, ValueError):
            raise OperatorError(f"timestamp {value!r} is out of range") from None
    elif isinstance(value, str):
        text = value.strip()
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            try:
                from dateutil import parser as date_parser

                moment = date_parser.parse(text)
            except (ValueError, OverflowError):
                raise OperatorError(f"not a timestamp: {value!r}") from None
    else:
        raise OperatorError(f"needs an ISO-8601 timestamp or epoch seconds, got {_type_name(value)}")
    if moment.tzinfo is None or moment.tzinfo.utcoffset(moment) is None:
        return moment.replace(tzinfo=UTC)  # naive means UTC, as in StackStorm
    return moment


def _seconds_ago(op: str, value: Any, pattern: Any) -> tuple[float, float]:
    if isinstance(pattern, bool):
        raise OperatorError(f"{op} needs a number of seconds as pattern, got boolean")
    try:
        seconds = float(pattern)
    except (TypeError, ValueError):
        raise OperatorError(f"{op} needs a number of seconds as pattern, got {_type_name(pattern)} {pattern!r}") from None
    try:
        moment = _parse_time(value)
    except OperatorError as exc:
        raise OperatorError(f"{op}: {exc}") from None
    return (utcnow() - moment).total_seconds(), seconds


def _binary(op: str, value: Any, pattern: Any) -> bool:
    """Every operator but exists/nexists/search, once missing values and null patterns are out of the way."""
    if op == "equals":
        return value == pattern
    if op == "nequals":
        return value != pattern
    if op == "iequals":
        value, pattern = _strings(op, value, pattern)
        return value.casefold() == pattern.casefold()
    if op == "contains":
        return _membership(op, pattern, value)
    if op == "ncontains":
        return not _membership(op, pattern, value)
    if op in ("icontains", "incontains"):
        value, pattern = _strings(op, value, pattern)
        found = pattern.casefold() in value.casefold()
        return found if op == "icontains" else not found
    if op == "startswith":
        value, pattern = _strings(op, value, pattern)
        return value.startswith(pattern)
    if op == "istartswith":
        value, pattern = _strings(op, value, pattern)
        return value.casefold().startswith(pattern.casefold())
    if op == "endswith":
        value, pattern = _strings(op, value, pattern)
        return value.endswith(pattern)
    if op == "iendswith":
        value, pattern = _strings(op, value, pattern)
        return value.casefold().endswith(pattern.casefold())
    if op == "lessthan":
        value, pattern = _ordered(op, value, pattern)
        return value < pattern
    if op == "greaterthan":
        value, pattern = _ordered(op, value, pattern)
        return value > pattern
    if op == "matchwildcard":
        value, pattern = _strings(op, value, pattern)
        return fnmatch.fnmatchcase(value, pattern)
    if op == "regex":
        value, pattern = _strings(op, value, pattern)
        return _regex(value, pattern, 0)
    if op == "iregex":
        value, pattern = _strings(op, value, pattern)
        return _regex(value, pattern, re.IGNORECASE)
    if op == "timediff_lt":
        ago, seconds = _seconds_ago(op, value, pattern)
        return ago < seconds
    if op == "timediff_gt":
        ago, seconds = _seconds_ago(op, value, pattern)
        return ago > seconds
    if op == "inside":
        return _membership(op, value, pattern)
    if op == "ninside":
        return not _membership(op, value, pattern)
    raise OperatorError(f"unknown operator {op!r}")  # pragma: no cover - OPERATORS and this function agree


def _canonical(op: Any) -> str:
    name = canonical_operator(op.lower()) if isinstance(op, str) else None
    if name is None:
        raise OperatorError(f"unknown operator {op!r}")
    return name


def _match(op: str, value: Any, pattern: Any, criterion: dict) -> tuple[bool, str | None]:
    """(matched, error) for a canonical operator; the error explains a failed search's sub-criterion."""
    if op == "exists":
        return value is not MISSING and value is not None, None
    if op == "nexists":
        return value is MISSING or value is None, None
    if value is MISSING:
        return False, "key not found"
    if pattern is None and op != "nequals":
        raise OperatorError(f"{op} needs a pattern, got null (exists/nexists test for null)")
    value, pattern = _decode(value), _decode(pattern)
    if op == "search":
        return _search(value, pattern, criterion.get("condition"))
    return _binary(op, value, pattern), None


def evaluate(op: str, value: Any, pattern: Any, criterion: dict | None = None) -> bool:
    """Whether ``value`` (``MISSING`` for an absent key) satisfies ``op`` with ``pattern``.

    ``criterion`` is the whole criterion (``search`` reads its ``condition``). Raises :class:`OperatorError`
    when the operator is unknown or cannot compare (bad regex, wrong types, unparsable timestamp...).
    """
    return _match(_canonical(op), value, pattern, criterion or {})[0]


# -- rendering and search ---------------------------------------------------------------------------------

class _RenderError(Exception):
    """A pattern's template failed; caught by evaluate_criteria."""


def _render(pattern: Any, render: Callable[[Any], Any] | None) -> Any:
    if render is None or pattern is None:
        return pattern
    try:
        return render(pattern)
    except Exception as exc:  # a template's failure is the criterion's failure, never the event's
        raise _RenderError(f"render error: {exc}") from None


def _prepared(op: str, criterion: dict, render: Callable[[Any], Any] | None) -> Any:
    """The criterion's pattern ready to compare: rendered, or for search its sub-criteria rendered."""
    pattern = criterion.get("pattern")
    if op in ("exists", "nexists"):
        return pattern
    if op == "search":
        if not isinstance(pattern, dict):
            return pattern
        return {key: _prepared_child(sub, render) for key, sub in pattern.items()}
    return _render(pattern, render)


def _prepared_child(sub: Any, render: Callable[[Any], Any] | None) -> Any:
    if not isinstance(sub, dict):
        return sub
    try:
        op = _canonical(sub.get("type"))
    except OperatorError:
        return sub
    return {**sub, "pattern": _prepared(op, sub, render)} if "pattern" in sub else sub


def _check_child(key: Any, sub: Any, item: Any) -> tuple[bool, str | None]:
    if not isinstance(sub, dict):
        return False, f"{key}: must be a mapping with 'type' and 'pattern'"
    try:
        op = _canonical(sub.get("type"))
        value = lookup({ITEM_PREFIX: item}, key)
        matched, error = _match(op, value, sub.get("pattern"), sub)
    except OperatorError as exc:
        return False, f"{key}: {exc}"
    if matched:
        return True, None
    return False, (f"{key}: {error}" if error and error != "key not found" else None)


def _search(value: Any, pattern: Any, condition: Any) -> tuple[bool, str | None]:
    if condition not in SEARCH_CONDITIONS:
        raise OperatorError(f"search condition must be one of {', '.join(sorted(SEARCH_CONDITIONS))}, got {condition!r}")
    if not isinstance(pattern, dict):
        raise OperatorError(f"search needs a mapping of item.<field> criteria as pattern, got {_type_name(pattern)}")
    if isinstance(value, dict):
        value = [value]  # as in StackStorm
    if not isinstance(value, list | tuple):
        raise OperatorError(f"search needs a list, got {_type_name(value)}")
    every_item = condition in ("all", "all2any")
    every_child = condition in ("any", "all")
    first_error: list[str] = []

    def item_matches(index: int, item: Any) -> bool:
        outcomes: Iterable[bool] = (_child(index, key, sub, item) for key, sub in pattern.items())
        return all(outcomes) if every_child else any(outcomes)

    def _child(index: int, key: Any, sub: Any, item: Any) -> bool:
        matched, error = _check_child(key, sub, item)
        if error and not first_error:
            first_error.append(f"item {index}, {error}")
        return matched

    items = (item_matches(index, item) for index, item in enumerate(value))
    matched = all(items) if every_item else any(items)
    return matched, (None if matched else (first_error[0] if first_error else None))


# -- criteria ---------------------------------------------------------------------------------------------

def _result(key: Any, op: Any, pattern: Any, value: Any, matched: bool, error: str | None) -> CriterionResult:
    return CriterionResult(
        key=str(key), type=op if isinstance(op, str) else ("" if op is None else str(op)), pattern=pattern,
        value=None if value is MISSING else value, matched=bool(matched), error=None if matched else error,
    )


def evaluate_criteria(
    criteria: dict | None, context: dict, render: Callable[[Any], Any] | None = None, *, stop_at_miss: bool = False
) -> list[CriterionResult]:
    """One result per criterion, in the order of ``criteria``; never raises for a criterion's problem.

    ``stop_at_miss`` ends at the first criterion that does not match (the rule engine's hot path: with
    many rules on one trigger most fail early, and only a full match needs every result)."""
    results: list[CriterionResult] = []
    for key, criterion in (criteria or {}).items():
        if not isinstance(criterion, dict):
            results.append(_result(key, None, None, MISSING, False, "criterion must be a mapping with 'type' and 'pattern'"))
            continue
        written = criterion.get("type")
        pattern = criterion.get("pattern")
        value = lookup(context, key)
        try:
            op = _canonical(written)
            pattern = _prepared(op, criterion, render)
            matched, error = _match(op, value, pattern, criterion)
        except _RenderError as exc:
            matched, error = False, str(exc)
        except OperatorError as exc:
            matched, error = False, str(exc)
        except Exception as exc:  # an operator bug must fail one criterion, not the event
            matched, error = False, f"{type(exc).__name__}: {exc}"
        results.append(_result(key, written, pattern, value, matched, error))
        if stop_at_miss and not matched:
            break
    return results


def criteria_match(criteria: dict | None, context: dict, render: Callable[[Any], Any] | None = None) -> bool:
    """Whether every criterion matches: the same verdict as ``all_matched(evaluate_criteria(...))`` without
    building per-criterion records (a criterion that errs does not match). The rule engine asks this of
    every candidate rule of an event, and builds the records only for the rules that match."""
    for key, criterion in (criteria or {}).items():
        if not isinstance(criterion, dict):
            return False
        try:
            op = _canonical(criterion.get("type"))
            value = _walk(context, list(_split_cached(key))) if isinstance(key, str) else MISSING
            if not _match(op, value, _prepared(op, criterion, render), criterion)[0]:
                return False
        except Exception:  # an error is a miss here; the detailed evaluation reports it
            return False
    return True


def compile_criteria(criteria: dict | None) -> Callable[..., bool]:
    """``criteria_match`` for criteria whose patterns hold no template, prepared once: the operator names
    resolved, the keys split, the patterns taken as written and regexes compiled. The rule engine builds one
    per rule when it indexes a trigger's rules and runs it against every candidate rule of every event, with
    a ``memo`` dict per event so each key is looked up once however many rules test it."""
    steps: list[tuple[str | None, list[str] | None, str, Any, dict, Any]] = []
    for key, criterion in (criteria or {}).items():
        if not isinstance(criterion, dict):
            return _never
        try:
            op = _canonical(criterion.get("type"))
        except OperatorError:
            return _never
        pattern = _prepared(op, criterion, None)
        search = None
        if op in ("regex", "iregex") and isinstance(pattern, str):
            try:
                search = _compile(pattern, re.IGNORECASE if op == "iregex" else 0).search
            except re.error:
                return _never  # a bad regex never matches (the detailed evaluation reports it)
        name = key if isinstance(key, str) else None
        steps.append((name, list(_split_cached(key)) if name is not None else None, op, pattern, criterion, search))

    def matches(context: dict, memo: dict | None = None) -> bool:
        for name, parts, op, pattern, criterion, search in steps:
            if parts is None:
                value = MISSING
            elif memo is None:
                value = _walk(context, parts)
            else:
                value = memo.get(name, _UNSEEN)
                if value is _UNSEEN:
                    value = memo[name] = _walk(context, parts)
            if search is not None and type(value) is str:
                if search(value) is None:
                    return False
                continue
            try:
                if not _match(op, value, pattern, criterion)[0]:
                    return False
            except Exception:  # an error is a miss here; the detailed evaluation reports it
                return False
        return True

    return matches


_UNSEEN = object()


def _never(context: dict, memo: dict | None = None) -> bool:
    return False


def all_matched(results: Iterable[CriterionResult]) -> bool:
    """Criteria are ANDed; no criteria at all matches."""
    return all(result.matched for result in results)
