"""Reading actions on the execution hot path."""
from __future__ import annotations

from django.db import connections

from apps.core.rows import reader
from apps.packs.models import Pack, Runtime

from .models import Action

_sql: dict[tuple[str, bool], str] = {}


def action_with_runtime(*, ref: str | None = None, pk: int | None = None) -> Action | None:
    """The action with its ``pack`` and ``runner_type`` loaded — what
    ``Action.objects.select_related("pack", "runner_type").filter(ref=...).first()`` returns — in one
    hand-written join, always read fresh (no cache: a disabled or edited action takes effect at once)."""
    if (ref is None) == (pk is None):
        raise TypeError("give exactly one of ref or pk")
    actions, packs, runtimes = reader(Action, "a"), reader(Pack, "p"), reader(Runtime, "r")
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
    if row is None:
        return None
    action = actions.build(row)
    action._state.fields_cache["pack"] = packs.build(row, actions.width)
    action._state.fields_cache["runner_type"] = runtimes.build(row, actions.width + packs.width)
    return action
