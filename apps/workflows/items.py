"""The with-items hot path: one item's child ended → count it, start the next, under the task's row lock.

10,000 items is a normal workload (SPEC §7), so this path reads and writes a fixed, small set of rows per
item, whatever the number of items, tasks or variables:

- ``SELECT ... FOR UPDATE`` of the task's counters (never its item list or results);
- the conditional ``task_reported`` update of the child (exactly-once counting);
- one read of the workflow's status; one ``UPDATE`` of the counters;
- for each item started: the item itself (``items -> i``, not the list), and the child's row.

The workflow execution row is not locked here (the children's ``parent`` foreign key only needs a key-share
lock, which the conductor's ``FOR NO KEY UPDATE`` allows). Whatever needs the whole workflow — the task's
last item, a pause or cancel with nothing left in flight — goes to :func:`conductor.finalize_items` after
commit, which takes the conductor's usual locks; the sweep repeats that if the process died in between.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

from django.db import connections, router, transaction
from django.db.models.fields.json import KeyTransform
from django.utils import timezone

from apps.core.rows import lock_clause, reader, statement
from apps.core.statuses import ExecutionStatus, TaskStatus
from apps.core.templating import TemplateError, contains_template
from apps.executions import services as executions
from apps.executions.models import Execution
from apps.executions.parameters import ParameterError

from .models import TaskExecution, WorkflowExecution

S = ExecutionStatus
T = TaskStatus
STARTABLE = (S.RUNNING, S.PENDING)
_ACTION_TTL = 5.0


class _LRU(OrderedDict):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def put(self, key, value) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


# Keyed by (workflow execution id, its `created`): an id alone can come back on SQLite, where a rolled-back
# insert returns its AUTOINCREMENT value, and then must not find the rolled-back workflow's entry.
_definitions: _LRU = _LRU(256)  # -> the workflow's definition snapshot (immutable)
_owners: _LRU = _LRU(256)  # -> (execution id, user, mask values)
_actions: dict[str, tuple[float, Any]] = {}


def definition(wf_id: int, created) -> dict[str, Any]:
    found = _definitions.get((wf_id, created))
    if found is None:
        found = WorkflowExecution.objects.filter(pk=wf_id).values_list("definition", flat=True).get()
        _definitions.put((wf_id, created), found)
    return found


def forget_actions(**_) -> None:
    _actions.clear()


def action(ref: str):
    """The action of a task, cached for a few seconds (an edit is seen by items started after that)."""
    from .conductor import _action

    hit = _actions.get(ref)
    now = time.monotonic()
    if hit is not None and hit[0] > now:
        return hit[1]
    found = _action(ref)
    _actions[ref] = (now + _ACTION_TTL, found)
    return found


def item_finished(child: Execution) -> bool:
    """Count ``child`` and start what its end makes room for. True when the caller must finalise the task
    (the last item is in, or the workflow stopped starting items and none is left in flight). False when
    nothing more is to do. Raises LookupError when the task is not a running with-items task.
    Its statements are hand-written (``apps.core.rows``): they run once per item."""
    te_id = child.task_execution_id
    with transaction.atomic():
        locked = _locked_counters(te_id)
        if locked is None or locked[0].status not in (T.RUNNING, T.PENDING) or locked[0].items_total is None:
            raise LookupError(te_id)
        te, wf, status = locked
        if not mark_reported(child.pk):
            return False  # counted already
        wf_id, name, total, started, concurrency = (te.workflow_execution_id, te.task_name, te.items_total,
                                                    te.items_started, te.concurrency)
        done = te.items_done + 1
        failed = te.items_failed + (child.status != S.SUCCEEDED)
        startable = status in STARTABLE and not wf.failing
        room = 0
        if startable and started < total:
            room = total - started
            if concurrency:
                room = min(room, concurrency - (started - done))
        if room > 0:
            _launch((wf_id, wf.created), wf.execution_id, te_id, name, range(started, started + room))
            started += room
        _save_counters(te_id, done, failed, started)
        if total <= 100 or done % (total // 100) == 0:  # progress: at most ~100 messages per task
            from apps.notifications.services import task_changed

            te.items_done, te.items_failed, te.items_started = done, failed, started
            task_changed(te)
    return done >= total or (not startable and done >= started)


_TE_HEAVY = frozenset({"items", "result", "input", "published"})
_WF_HEAVY = frozenset({"definition", "vars", "output", "errors", "start_tasks"})


def _statement(name: str, using: str, build) -> str:
    return statement(f"workflows.items.{name}", using, build)


def _locked_counters(te_id: int) -> tuple[TaskExecution, WorkflowExecution, str] | None:
    """The task row (without its item list, results, input or published values) locked FOR UPDATE, its
    workflow execution row (without definition or variables) and the workflow's execution status, in one
    statement: every item's end waits for this task's lock, so the fewer round trips while it is held, the
    more items per second a task can count."""
    te_rows = reader(TaskExecution, "t", write=True, exclude=_TE_HEAVY)
    wf_rows = reader(WorkflowExecution, "w", write=True, exclude=_WF_HEAVY)
    using = te_rows.using
    features = connections[using].features
    with connections[using].cursor() as cursor:
        cursor.execute(_statement("te", using, lambda qn: (
            f"SELECT {te_rows.columns}, {wf_rows.columns}, e.{qn('status')} FROM {te_rows.table} t "
            f"JOIN {wf_rows.table} w ON w.{qn('id')} = t.{qn('workflow_execution_id')} "
            f"JOIN {qn(Execution._meta.db_table)} e ON e.{qn('id')} = w.{qn('execution_id')} "
            f"WHERE t.{qn('id')} = %s"
            + (" FOR UPDATE OF t" if features.has_select_for_update_of else lock_clause(using))
        )), [te_id])
        row = cursor.fetchone()
    if row is None:
        return None
    return te_rows.build(row), wf_rows.build(row, te_rows.width), row[te_rows.width + wf_rows.width]


def mark_reported(execution_id: int) -> bool:
    """The child's end is counted exactly once: True for the one caller that flips ``task_reported``."""
    using = router.db_for_write(Execution)
    with connections[using].cursor() as cursor:
        cursor.execute(_statement("reported", using, lambda qn: (
            f"UPDATE {qn(Execution._meta.db_table)} SET {qn('task_reported')} = %s "
            f"WHERE {qn('id')} = %s AND {qn('task_reported')} = %s"
        )), [True, execution_id, False])
        return cursor.rowcount == 1


def _workflow_and_status(wf_id: int) -> tuple[WorkflowExecution, str]:
    """The workflow execution row (without its definition or variables) and its execution's status."""
    rows = reader(WorkflowExecution, "w", write=True, exclude=_WF_HEAVY)
    with connections[rows.using].cursor() as cursor:
        cursor.execute(_statement("wf", rows.using, lambda qn: (
            f"SELECT {rows.columns}, e.{qn('status')} FROM {rows.table} w "
            f"JOIN {qn(Execution._meta.db_table)} e ON e.{qn('id')} = w.{qn('execution_id')} WHERE w.{qn('id')} = %s"
        )), [wf_id])
        row = cursor.fetchone()
    if row is None:
        raise WorkflowExecution.DoesNotExist(wf_id)
    return rows.build(row), row[rows.width]


def _save_counters(te_id: int, done: int, failed: int, started: int) -> None:
    using = router.db_for_write(TaskExecution)
    connection = connections[using]
    now = TaskExecution._meta.get_field("updated").get_db_prep_save(timezone.now(), connection)
    with connection.cursor() as cursor:
        cursor.execute(_statement("counters", using, lambda qn: (
            f"UPDATE {qn(TaskExecution._meta.db_table)} SET {qn('items_done')} = %s, {qn('items_failed')} = %s, "
            f"{qn('items_started')} = %s, {qn('updated')} = %s WHERE {qn('id')} = %s"
        )), [done, failed, started, now, te_id])


def _launch(wf_key: tuple, execution_id: int, te_id: int, name: str, indexes: range) -> None:
    from .conductor import _failed_item_row, _render_input, _step

    wf_id = wf_key[0]
    task = definition(*wf_key)["tasks"][name]
    template = task.get("input") or {}
    templated = contains_template(template)
    owner = _owner(wf_key, execution_id)
    parent = Execution(pk=execution_id)
    try:
        act = action(task["action"])
    except Exception as exc:  # deleted since the task started: each item fails on its own
        for index in indexes:
            _failed_item_row(execution_id, owner[1], te_id, name, None, index, str(exc), ref=task["action"])
        return
    base = None
    if templated:
        from .conductor import _read_execution

        wf, _ = _workflow_and_status(wf_id)
        wf.definition = definition(*wf_key)
        step = _step(wf, _read_execution(execution_id))
        base = step.for_task(None)
    batched = bool(task.get("batch_size"))
    timeout = int(task["timeout"]) if task.get("timeout") else None
    for index in indexes:
        try:
            if templated:
                item = _item_at(te_id, index)
                ctx = dict(base)
                ctx.update({"items": item, "batch_index": index} if batched else {"item": item, "index": index})
                parameters = _render_input(template, ctx)
                secrets = step.secret_values()
            else:
                secrets = owner[2]
                parameters = template
            executions.create_execution(
                act, parameters, user=owner[1], parent=parent, task_name=name, task_execution_id=te_id,
                item_index=index, timeout=timeout, mask_values=secrets, secret_names=_secret_names(parameters, secrets),
            )
        except TemplateError as exc:
            _failed_item_row(execution_id, owner[1], te_id, name, act, index, str(exc))
        except (ParameterError, executions.ExecutionStateError) as exc:
            from .conductor import _parameter_error_text

            _failed_item_row(execution_id, owner[1], te_id, name, act, index, f"input: {_parameter_error_text(exc)}")


def _secret_names(parameters: Any, mask_values: list[str]) -> set[str]:
    if not mask_values or not isinstance(parameters, dict):
        return set()
    import json

    names = set()
    for key, value in parameters.items():
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        if any(m and m in text for m in mask_values):
            names.add(key)
    return names


def _owner(wf_key: tuple, execution_id: int):
    """(execution id, the user it runs as, its secret plaintexts to mask): fixed for the workflow's life."""
    found = _owners.get(wf_key)
    if found is None:
        from apps.executions.parameters import full_parameters

        execution = Execution.objects.select_related("started_by").get(pk=execution_id)
        _, mask_values = full_parameters(execution)
        found = (execution_id, execution.started_by, mask_values)
        _owners.put(wf_key, found)
    return found


def _item_at(te_id: int, index: int) -> Any:
    """One item, read from the stored list without loading the whole list."""
    return (TaskExecution.objects.filter(pk=te_id).annotate(item=KeyTransform(str(index), "items"))
            .values_list("item", flat=True).get())
