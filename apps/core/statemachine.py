"""The conditional-update helper behind every status change."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from django.db import connections, models, router
from django.db.models.expressions import Combinable
from django.utils import timezone

from .statuses import TERMINAL, allowed_sources

_listeners: dict[type, list[Callable[[models.Model], None]]] = {}
_field_maps: dict[type, dict[str, models.Field]] = {}


def _fields(model: type) -> dict[str, models.Field]:
    """Concrete fields by name and by attname (``worker`` and ``worker_id``), built once per model."""
    found = _field_maps.get(model)
    if found is None:
        found = {}
        for f in model._meta.concrete_fields:
            found[f.name] = f
            found[f.attname] = f
        _field_maps[model] = found
    return found


def _conditional_update(model: type, pk: Any, allowed: frozenset[str], updates: dict[str, Any]) -> int:
    """``UPDATE <table> SET ... WHERE id = %s AND status IN (...)``, written directly: this statement runs
    several times per execution, and the ORM spends more time compiling it than the database running it.
    Anything that is not a plain value (an expression, a model instance) goes through the ORM instead."""
    fields = _fields(model)
    if any(isinstance(v, models.Model | Combinable) or name not in fields for name, v in updates.items()):
        return model._default_manager.filter(pk=pk, status__in=allowed).update(**updates)
    connection = connections[router.db_for_write(model)]
    qn = connection.ops.quote_name
    sets, params = [], []
    for name, value in updates.items():
        field = fields[name]
        sets.append(f"{qn(field.column)} = %s")
        params.append(field.get_db_prep_save(value, connection))
    pk_field = model._meta.pk
    statuses = sorted(allowed)
    sql = (f"UPDATE {qn(model._meta.db_table)} SET {', '.join(sets)} WHERE {qn(pk_field.column)} = %s "
           f"AND {qn(fields['status'].column)} IN ({', '.join(['%s'] * len(statuses))})")
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, pk_field.get_db_prep_value(pk, connection), *statuses])
        return cursor.rowcount


def on_transition(model: type, listener: Callable[[models.Model], None]) -> None:
    """``listener(obj)`` right after every transition of a ``model`` row that its caller won, inside the
    caller's transaction, with ``obj`` updated (notifications defer their work with ``on_commit``)."""
    if listener not in _listeners.setdefault(model, []):
        _listeners[model].append(listener)


def announce_transition(obj: models.Model) -> None:
    """Tell the transition listeners about a status change made without :func:`transition`: a row inserted
    directly in a later status (an execution no policy holds is inserted ``scheduled``), or a hand-written
    claim (the worker's ``UPDATE ... RETURNING``)."""
    for listener in _listeners.get(type(obj), ()):
        listener(obj)


def transition(
    obj: models.Model,
    *,
    to: str,
    from_: str | Iterable[str] | None = None,
    **fields: Any,
) -> bool:
    """Move ``obj`` to status ``to`` if, and only if, its row is still in an allowed source status.

    ``from_`` narrows the allowed sources (it must be a subset of the transitions table; a status the
    table does not allow raises ``ValueError``: that is a programming error, not a lost race).
    Extra ``fields`` are written in the same UPDATE. Returns True when this caller won the race; the
    in-memory object is then updated too. Works identically on SQLite and PostgreSQL because it is a
    single ``UPDATE ... WHERE status IN (...)``.
    """
    allowed = allowed_sources(to)
    if from_ is not None:
        wanted = {from_} if isinstance(from_, str) else set(from_)
        illegal = wanted - allowed
        if illegal:
            raise ValueError(f"transition {sorted(illegal)} -> {to!r} is not in the transitions table")
        allowed = frozenset(wanted)
    now = timezone.now()
    updates: dict[str, Any] = {"status": to, **fields}
    model = type(obj)
    field_names = _fields(model)
    if "updated" in field_names:
        updates["updated"] = now
    if to in TERMINAL and "finished_at" in field_names and "finished_at" not in fields:
        updates["finished_at"] = now
    won = _conditional_update(model, obj.pk, allowed, updates) == 1
    if won:
        for name, value in updates.items():
            setattr(obj, name, value)
        for listener in _listeners.get(model, ()):
            listener(obj)
    return won
