"""The conditional-update helper behind every status change."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import models
from django.utils import timezone

from .statuses import TERMINAL, allowed_sources


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
    field_names = {f.name for f in model._meta.concrete_fields}
    if "updated" in field_names:
        updates["updated"] = now
    if to in TERMINAL and "finished_at" in field_names and "finished_at" not in fields:
        updates["finished_at"] = now
    won = model._default_manager.filter(pk=obj.pk, status__in=allowed).update(**updates) == 1
    if won:
        for name, value in updates.items():
            setattr(obj, name, value)
    return won
