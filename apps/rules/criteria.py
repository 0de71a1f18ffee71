"""Rule criteria operators (SPEC §5): names, aliases and the shape of a criterion."""
from __future__ import annotations

from typing import Any

OPERATORS = {
    "equals", "nequals", "iequals", "contains", "ncontains", "icontains", "incontains", "startswith",
    "istartswith", "endswith", "iendswith", "lessthan", "greaterthan", "matchwildcard", "regex", "iregex",
    "timediff_lt", "timediff_gt", "exists", "nexists", "inside", "ninside", "search",
}
ALIASES = {"eq": "equals", "neq": "nequals", "lt": "lessthan", "gt": "greaterthan", "in": "inside", "nin": "ninside"}
NO_PATTERN = {"exists", "nexists"}
SEARCH_CONDITIONS = {"any", "all", "any2any", "all2any"}


def canonical_operator(name: str) -> str | None:
    name = name.lower() if isinstance(name, str) else name
    name = ALIASES.get(name, name)
    return name if name in OPERATORS else None


def criteria_errors(criteria: Any, where: str = "criteria") -> list[str]:
    """Every structural problem in a criteria block, each naming the key."""
    if criteria in (None, {}):
        return []
    if not isinstance(criteria, dict):
        return [f"{where} must be a mapping of dotted key to {{type, pattern}}"]
    errors: list[str] = []
    for key, criterion in criteria.items():
        here = f"{where}.{key}"
        if not isinstance(criterion, dict):
            errors.append(f"{here}: must be a mapping with 'type' and 'pattern'")
            continue
        op = criterion.get("type")
        if not isinstance(op, str) or canonical_operator(op) is None:
            errors.append(f"{here}.type: unknown operator {op!r}")
            continue
        op = canonical_operator(op)
        if op not in NO_PATTERN and "pattern" not in criterion:
            errors.append(f"{here}.pattern: operator {op} needs a pattern")
        if op == "search":
            if criterion.get("condition") not in SEARCH_CONDITIONS:
                errors.append(f"{here}.condition: must be one of {', '.join(sorted(SEARCH_CONDITIONS))}")
            errors.extend(criteria_errors(criterion.get("pattern"), f"{here}.pattern"))
    return errors
