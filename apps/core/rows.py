"""Model instances from hand-written SQL, for the few statements that run once or more per execution.

The ORM spends far more CPU compiling a query (joins, column lists, converters) than PostgreSQL spends running
it; on the execution hot path (the ``execute`` request, the worker's claim) that compilation was the largest
single cost. :class:`RowReader` does the part of the compiler that matters once per model and database
connection — the column list and each column's value converters — so a statement can be written directly and
its rows still come back as ordinary, fully typed model instances (JSON decoded, datetimes aware).
"""
from __future__ import annotations

import threading
from typing import Any

from django.db import connections, models, router
from django.db.models import signals

_readers: dict[tuple, RowReader] = {}
_readers_lock = threading.Lock()


class RowReader:
    """Reads every concrete column of ``model`` (as ``alias.column``) and builds instances from the values."""

    def __init__(self, model: type[models.Model], alias: str, using: str, exclude: frozenset[str] = frozenset()) -> None:
        connection = connections[using]
        qn = connection.ops.quote_name
        self.model = model
        self.using = using
        # Excluded fields are left deferred on the instances (read on first access), like QuerySet.defer().
        self.fields = [f for f in model._meta.concrete_fields if f.name not in exclude or f.primary_key]
        self.attnames = [f.attname for f in self.fields]
        self.columns = ", ".join(f"{alias}.{qn(f.column)}" for f in self.fields)
        self.table = qn(model._meta.db_table)
        self.width = len(self.fields)
        self.converters: list[tuple[int, list, Any]] = []
        for index, field in enumerate(self.fields):
            col = field.get_col(alias)
            found = connection.ops.get_db_converters(col) + col.get_db_converters(connection)
            if found:
                self.converters.append((index, found, col))
        # Model.__init__ (per-field setattr, pre_init/post_init signals) was the largest part of building an
        # instance. A model nothing listens on for those signals, and that does not override __init__, is
        # built the way Model.__init__ would leave it: its state, and the column values in its __dict__.
        self.fast = (model.__init__ is models.Model.__init__
                     and not signals.pre_init.has_listeners(model) and not signals.post_init.has_listeners(model))

    def build(self, values: tuple | list, offset: int = 0) -> models.Model:
        """An instance from ``values[offset:offset + width]`` (rows of a join hold several models side by side)."""
        row = list(values[offset:offset + self.width])
        connection = connections[self.using]
        for index, converters, col in self.converters:
            value = row[index]
            for converter in converters:
                value = converter(value, col, connection)
            row[index] = value
        if not self.fast:
            return self.model.from_db(self.using, self.attnames, row)
        instance = self.model.__new__(self.model)
        state = instance._state = models.base.ModelState()
        state.adding = False
        state.db = self.using
        instance.__dict__.update(zip(self.attnames, row))
        return instance


def reader(model: type[models.Model], alias: str = "t", *, write: bool = False,
           exclude: frozenset[str] = frozenset()) -> RowReader:
    """The cached :class:`RowReader` of ``model`` under table alias ``alias`` on its (read or write) database,
    leaving the fields named in ``exclude`` deferred."""
    using = router.db_for_write(model) if write else router.db_for_read(model)
    key = (model, alias, using, exclude)
    found = _readers.get(key)
    if found is None:
        with _readers_lock:
            found = _readers.setdefault(key, RowReader(model, alias, using, exclude))
    return found


def lock_clause(using: str, *, no_key: bool = False) -> str:
    """`` FOR [NO KEY] UPDATE`` where the database has row locks (PostgreSQL); nothing on SQLite, whose write
    transactions are serialised anyway."""
    features = connections[using].features
    if not features.has_select_for_update:
        return ""
    return " FOR NO KEY UPDATE" if no_key and features.has_select_for_no_key_update else " FOR UPDATE"


_by_pk_sql: dict[tuple[type, str], str] = {}


def get_by_pk(model: type[models.Model], pk: Any, *, memo=None) -> models.Model | None:
    """``model.objects.filter(pk=pk).first()`` without the ORM's query compilation. ``memo``: a
    :class:`apps.core.generation.RowMemo` that may answer with the row instead of the database (every call
    still builds a new instance)."""
    rows = reader(model, "t")
    if memo is not None:
        row = memo.get_or_fetch((model, rows.using, pk), lambda: _fetch_by_pk(model, rows, pk))
        return rows.build(row) if row is not None else None
    row = _fetch_by_pk(model, rows, pk)
    return rows.build(row) if row is not None else None


def _fetch_by_pk(model: type[models.Model], rows: RowReader, pk: Any) -> tuple | None:
    sql = _by_pk_sql.get((model, rows.using))
    if sql is None:
        qn = connections[rows.using].ops.quote_name
        sql = _by_pk_sql[(model, rows.using)] = (
            f"SELECT {rows.columns} FROM {rows.table} t WHERE t.{qn(model._meta.pk.column)} = %s"
        )
    with connections[rows.using].cursor() as cursor:
        cursor.execute(sql, [pk])
        row = cursor.fetchone()
    return tuple(row) if row is not None else None


_insert_sql: dict[tuple[type, str], tuple[str, list]] = {}


def _has_save_receivers(model: type[models.Model]) -> bool:
    return signals.pre_save.has_listeners(model) or signals.post_save.has_listeners(model)


def _insert_statement(model: type[models.Model], using: str) -> tuple[str, list]:
    """``INSERT INTO table (every column but the auto pk) VALUES (%s, ...) RETURNING pk`` and its fields."""
    found = _insert_sql.get((model, using))
    if found is None:
        meta = model._meta
        qn = connections[using].ops.quote_name
        fields = [f for f in meta.concrete_fields if f is not meta.auto_field]
        found = _insert_sql[(model, using)] = (
            f"INSERT INTO {qn(meta.db_table)} ({', '.join(qn(f.column) for f in fields)}) "
            f"VALUES ({', '.join(['%s'] * len(fields))}) RETURNING {qn(meta.pk.column)}",
            fields,
        )
    return found


def _saved(obj: models.Model, pk: Any, using: str) -> models.Model:
    setattr(obj, obj._meta.pk.attname, pk)
    obj._state.adding = False
    obj._state.db = using
    return obj


def insert(obj: models.Model) -> models.Model:
    """``obj.save()`` for a new row (``Model.objects.create``), as one hand-written ``INSERT ... RETURNING``:
    field ``pre_save`` (auto_now) and database preparation are the ORM's own. A model with ``pre_save`` or
    ``post_save`` receivers goes through ``save()``, so no receiver is ever skipped."""
    model = type(obj)
    if _has_save_receivers(model):
        obj.save(force_insert=True)
        return obj
    using = router.db_for_write(model, instance=obj)
    connection = connections[using]
    sql, fields = _insert_statement(model, using)
    values = [f.get_db_prep_save(f.pre_save(obj, True), connection) for f in fields]
    with connection.cursor() as cursor:
        cursor.execute(sql, values)
        pk = cursor.fetchone()[0]
    return _saved(obj, pk, using)


def insert_linked(first: models.Model, second: models.Model, link: str) -> models.Model:
    """Insert ``first``, then ``second`` with its field ``link`` set to ``first``'s new primary key (an id
    kept in a text column, such as an audit event's ``object_ref``, or a foreign key). Both rows are written
    or neither: on PostgreSQL in one statement (a data-modifying ``WITH``: one round trip instead of the four
    of BEGIN, two INSERTs and COMMIT), elsewhere as two INSERTs in one transaction. Returns ``first``."""
    from django.db import transaction

    link_field = type(second)._meta.get_field(link)
    using = router.db_for_write(type(first), instance=first)
    connection = connections[using]
    if (connection.vendor != "postgresql" or _has_save_receivers(type(first)) or _has_save_receivers(type(second))
            or router.db_for_write(type(second), instance=second) != using):
        with transaction.atomic(using=using):
            insert(first)
            setattr(second, link_field.attname, link_field.to_python(first.pk))
            insert(second)
        return first
    key = (type(first), type(second), link, using)
    found = _linked_sql.get(key)
    if found is None:
        qn = connection.ops.quote_name
        first_sql, first_fields = _insert_statement(type(first), using)
        meta = type(second)._meta
        fields = [f for f in meta.concrete_fields if f is not meta.auto_field and f is not link_field]
        first_pk = qn(type(first)._meta.pk.column)
        found = _linked_sql[key] = (
            f"WITH linked AS ({first_sql}) "
            f"INSERT INTO {qn(meta.db_table)} ({', '.join(qn(f.column) for f in fields)}, {qn(link_field.column)}) "
            f"VALUES ({', '.join(['%s'] * len(fields))}, (SELECT {first_pk} FROM linked)) "
            f"RETURNING (SELECT {first_pk} FROM linked), {qn(meta.pk.column)}",
            first_fields, fields,
        )
    sql, first_fields, fields = found
    values = [f.get_db_prep_save(f.pre_save(first, True), connection) for f in first_fields]
    values += [f.get_db_prep_save(f.pre_save(second, True), connection) for f in fields]
    with connection.cursor() as cursor:
        cursor.execute(sql, values)
        first_pk, second_pk = cursor.fetchone()
    _saved(first, first_pk, using)
    setattr(second, link_field.attname, link_field.to_python(first_pk))
    _saved(second, second_pk, using)
    return first


_linked_sql: dict[tuple, tuple[str, list, list]] = {}


_update_sql: dict[tuple, tuple[str, list]] = {}


def update(obj: models.Model, fields: tuple[str, ...]) -> None:
    """``obj.save(update_fields=fields)`` as one hand-written ``UPDATE ... WHERE pk``. A model with
    ``pre_save`` or ``post_save`` receivers goes through ``save()``, so no receiver is ever skipped."""
    model = type(obj)
    if signals.pre_save.has_listeners(model) or signals.post_save.has_listeners(model):
        obj.save(update_fields=list(fields))
        return
    meta = model._meta
    using = router.db_for_write(model, instance=obj)
    connection = connections[using]
    key = (model, using, fields)
    found = _update_sql.get(key)
    if found is None:
        qn = connection.ops.quote_name
        targets = [meta.get_field(name) for name in fields]
        found = _update_sql[key] = (
            f"UPDATE {qn(meta.db_table)} SET {', '.join(f'{qn(f.column)} = %s' for f in targets)} "
            f"WHERE {qn(meta.pk.column)} = %s",
            targets,
        )
    sql, targets = found
    values = [f.get_db_prep_save(f.pre_save(obj, False), connection) for f in targets]
    with connection.cursor() as cursor:
        cursor.execute(sql, [*values, obj.pk])


_statements: dict[tuple[str, str], str] = {}


def statement(name: str, using: str, build) -> str:
    """A hand-written statement, built once per name and database alias: ``build(quote_name)`` returns the
    SQL. ``name`` is global: prefix it with the module (``"workflows.items.te"``)."""
    found = _statements.get((name, using))
    if found is None:
        found = _statements[(name, using)] = build(connections[using].ops.quote_name)
    return found
