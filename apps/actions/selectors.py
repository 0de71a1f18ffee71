"""Reading actions on the execution hot path."""
from __future__ import annotations

from django.db import connections

from apps.core.generation import RowMemo
from apps.core.rows import reader
from apps.packs.models import Pack, Runtime

from .models import Action

_sql: dict[tuple[str, bool], str] = {}
_by_ref = RowMemo()


def action_with_runtime(*, ref: str | None = None, pk: int | None = None, cached: bool = False) -> Action | None:
    """The action with its ``pack`` and ``runner_type`` loaded — what
    ``Action.objects.select_related("pack", "runner_type").filter(ref=...).first()`` returns — in one
    hand-written join. ``cached`` (by ref): the row may come from this process's memo, valid under the
    configuration generation (``apps.core.generation``: any committed save or delete of an action, pack or
    runtime, and enable/disable, replaces it — a disabled or edited action takes effect at once); otherwise
    read fresh."""
    if (ref is None) == (pk is None):
        raise TypeError("give exactly one of ref or pk")
    actions, packs, runtimes = reader(Action, "a"), reader(Pack, "p"), reader(Runtime, "r")
    if cached and ref is not None:
        row = _by_ref.get_or_fetch((actions.using, ref), lambda: _fetch(actions, packs, runtimes, ref, pk))
    else:
        row = _fetch(actions, packs, runtimes, ref, pk)
    if row is None:
        return None
    action = actions.build(row)
    action._state.fields_cache["pack"] = packs.build(row, actions.width)
    action._state.fields_cache["runner_type"] = runtimes.build(row, actions.width + packs.width)
    return action


def _fetch(actions, packs, runtimes, ref: str | None, pk: int | None) -> tuple | None:
    connection = connections[actions.using]
    key = (actions.using, ref is not None)
    sql = _sql.get(key)
    if sql is None:
        qn = connection.ops.quote_name
        meta = Action._meta
        pack_fk, runtime_fk = meta.get_field("pack"), meta.get_field("runner_type")
        by = meta.get_field("ref") if ref is not None else meta.pk
        sql = _sql[key] = (
            f"SELECT {actions.columns}, {packs.columns}, {runtimes.columns} FROM {actions.table} a "
            f"JOIN {packs.table} p ON p.{qn(Pack._meta.pk.column)} = a.{qn(pack_fk.column)} "
            f"JOIN {runtimes.table} r ON r.{qn(runtime_fk.target_field.column)} = a.{qn(runtime_fk.column)} "
            f"WHERE a.{qn(by.column)} = %s"
        )
    with connection.cursor() as cursor:
        cursor.execute(sql, [ref if ref is not None else pk])
        row = cursor.fetchone()
    return tuple(row) if row is not None else None
