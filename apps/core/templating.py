"""Sandboxed Jinja for user-supplied templates (rule parameters, action parameters, workflow expressions).

A value that is exactly one template (``"{{ payload.count }}"``) keeps its JSON type; anything else renders
to a string. Errors name the template and, for undefined names, the missing variable.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from jinja2 import ChainableUndefined, StrictUndefined, TemplateSyntaxError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

WHOLE_TEMPLATE_RE = re.compile(r"^\s*\{\{(?P<expr>.*?)\}\}\s*$", re.DOTALL)


class TemplateError(ValueError):
    """A template failed to compile or render; ``str()`` is meant for people."""


def _to_json(value: Any) -> str:
    import json

    return json.dumps(value, default=str)


def _from_json(value: str) -> Any:
    import json

    return json.loads(value)


@lru_cache(maxsize=1)
def environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
    env.filters.update({"to_json": _to_json, "from_json": _from_json, "json": _to_json})
    return env


@lru_cache(maxsize=4096)
def _compile(source: str, native: bool):
    """Compiled once per distinct source: a whole-value template becomes an expression returning its
    native value (no string round trip, so "123" stays a string and 123 an integer)."""
    if native:
        return environment().compile_expression(source, undefined_to_none=False)
    return environment().from_string(source)


@lru_cache(maxsize=1)
def _lenient_environment() -> ImmutableSandboxedEnvironment:
    """For boolean conditions: a missing name or attribute is simply false (``payload.force`` absent)."""
    env = ImmutableSandboxedEnvironment(undefined=ChainableUndefined, autoescape=False)
    env.filters.update(environment().filters)
    return env


@lru_cache(maxsize=4096)
def _compile_condition(expression: str):
    return _lenient_environment().compile_expression(expression, undefined_to_none=True)


def render_condition(source: str, context: dict[str, Any]) -> Any:
    """Evaluate a ``{{ expression }}`` (or a bare expression) as a condition; undefined names are false."""
    whole = WHOLE_TEMPLATE_RE.match(source)
    expression = whole.group("expr").strip() if whole else source.strip()
    try:
        return _compile_condition(expression)(**context)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"condition {source!r}: syntax error: {exc.message}") from None
    except Exception as exc:
        raise TemplateError(f"condition {source!r}: {type(exc).__name__}: {exc}") from None


def is_template(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def render_string(source: str, context: dict[str, Any]) -> Any:
    """Render one string. An exact single ``{{ expr }}`` returns the expression's native value."""
    if not is_template(source):
        return source
    whole = WHOLE_TEMPLATE_RE.match(source)
    native = bool(whole) and "{{" not in whole.group("expr") and "}}" not in whole.group("expr")
    try:
        if native:
            value = _compile(whole.group("expr").strip(), True)(**context)
            if isinstance(value, StrictUndefined):
                str(value)  # raises UndefinedError naming the missing variable
            return value
        return _compile(source, False).render(context)
    except UndefinedError as exc:
        raise TemplateError(f"template {source!r}: {exc.message}") from None
    except TemplateSyntaxError as exc:
        raise TemplateError(f"template {source!r}: syntax error: {exc.message}") from None
    except Exception as exc:  # sandbox violations, type errors in expressions
        raise TemplateError(f"template {source!r}: {type(exc).__name__}: {exc}") from None


def render_value(value: Any, context: dict[str, Any]) -> Any:
    """Render templates anywhere inside a JSON value (dict keys stay as they are)."""
    if isinstance(value, str):
        return render_string(value, context)
    if isinstance(value, dict):
        return {k: render_value(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [render_value(v, context) for v in value]
    return value


def contains_template(value: Any) -> bool:
    if isinstance(value, str):
        return is_template(value)
    if isinstance(value, dict):
        return any(contains_template(v) for v in value.values())
    if isinstance(value, list):
        return any(contains_template(v) for v in value)
    return False


def syntax_errors(source: str) -> str | None:
    """The syntax error of a template, or None (for validation without rendering)."""
    try:
        _compile(source, False)
    except TemplateSyntaxError as exc:
        return exc.message
    return None
