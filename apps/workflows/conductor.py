"""The workflow conductor (SPEC §7, ENGINEERING principle 7): all state in the database.

A workflow execution is an ``Execution`` (runner ``workflow``) plus a ``WorkflowExecution`` row; each run of a
task is a ``TaskExecution``; each action a task runs is a child ``Execution`` linked by ``task_execution_id``.

How it advances:
- the workflow runner calls :func:`start` (entry tasks, or the re-run tasks) in the worker that claimed the
  workflow execution; the execution stays ``running`` with no worker attached (the conductor owns it);
- when a child execution ends, :func:`child_finished` runs (an ``on_finished`` handler, right after the
  commit that ended the child). Under a row lock on the task it marks the child reported (exactly once),
  counts with-items items and starts the next ones within ``concurrency``; when the task is complete it
  evaluates the task's transitions under a lock on the workflow (publish, joins counted in the database,
  next tasks created and their children requested in the same transaction);
- a periodic sweep (:mod:`.sweep`) repairs what a crash can leave: a child that ended but was never
  reported, a task ready but never started, retries due, task and workflow timeouts.

Every step reads a bounded amount: the task row (its item list deferred), the variables a template names,
the latest run of a task it names. Nothing grows with the number of tasks already run or items done.
"""
from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any

from django.db import connections, transaction
from django.db.models import F
from django.db.models.fields.json import KeyTransform
from django.utils import timezone

from apps.core.rows import get_by_pk, lock_clause, reader, statement
from apps.core.statemachine import transition
from apps.core.statuses import TERMINAL, ExecutionStatus, TaskStatus
from apps.core.templating import TemplateError, render_condition, render_value
from apps.executions import services as executions
from apps.executions.models import Execution
from apps.executions.parameters import ParameterError, full_parameters, mask
from apps.keys.crypto import get_ring

from .context import SECRET_VAR, SECRET_VAR_AAD, StepContext
from .models import TaskExecution, WorkflowDefinition, WorkflowExecution, WorkflowVariable

log = logging.getLogger("attune.workflows")
S = ExecutionStatus
T = TaskStatus

ACTIVE_TASK = [T.READY, T.RUNNING, T.PENDING]
IN_FLIGHT_TASK = [T.RUNNING, T.PENDING]
CHILD_TO_TASK = {S.SUCCEEDED: T.SUCCEEDED, S.FAILED: T.FAILED, S.TIMEOUT: T.TIMEOUT, S.CANCELED: T.CANCELED,
                 S.ABANDONED: T.FAILED}
# Workflow statuses in which new tasks may start.
STARTABLE = (S.RUNNING, S.PENDING)
COMMANDS = ("fail", "noop")


class WorkflowError(Exception):
    pass


# --- entry points ---------------------------------------------------------------------------------------

def start(execution_id: int) -> str:
    """Create the workflow state and start its first tasks. Idempotent (a redelivered message does nothing).
    Returns the status the workflow execution should report to the executor."""
    with transaction.atomic():
        execution = _locked_execution(execution_id)
        wf = WorkflowExecution.objects.filter(execution=execution).first()
        if wf is None:
            definition = _definition_of(execution)
            wf = WorkflowExecution.objects.create(execution=execution, definition=definition)
        elif wf.advance_count:
            return execution.status
        # The conductor owns the execution now: no worker's death may abandon it. The action's own timeout
        # applies when the request gave none (0: a workflow action without `timeout` has none).
        timeout = execution.timeout or (execution.action.timeout if execution.action is not None else None) or None
        Execution.objects.filter(pk=execution.pk).update(worker=None, timeout=timeout)
        execution.timeout = timeout
        definition = wf.definition
        step = _step(wf, execution)
        if not WorkflowVariable.objects.filter(workflow_execution=wf).exists():
            for name, value in (definition.get("vars") or {}).items():
                try:
                    rendered = render_value(value, step.for_task(None))
                except TemplateError as exc:
                    _fail_workflow_now(execution, wf, None, f"vars.{name}: {exc}")
                    return S.FAILED
                _set_var(wf, step, name, rendered, None)
        WorkflowExecution.objects.filter(pk=wf.pk).update(advance_count=F("advance_count") + 1,
                                                           last_advanced_at=timezone.now())
        wf.advance_count += 1
        first = wf.start_tasks or definition.get("entry") or []
        if not first:
            _fail_workflow_now(execution, wf, None, "the workflow has no entry task")
            return S.FAILED
        for name in first:
            _arrive(wf, execution, step, name, None)
        _maybe_finish(wf, execution, step)
    return execution.status


def child_finished(child: Execution) -> None:
    """A task's child execution ended: count it (exactly once) and advance the workflow."""
    if child.task_execution_id is None:
        return
    if child.item_index is not None:  # a with-items item: the hot path (items.py)
        from . import items

        try:
            if items.item_finished(child):
                finalize_items(child.task_execution_id)
            return
        except LookupError:
            pass  # not (or no longer) a running with-items task: recorded by the general path below
    with transaction.atomic():
        locked = _lock(child.task_execution_id)
        if locked is None:
            return
        execution, wf, te = locked
        from .items import mark_reported

        if not mark_reported(child.pk):
            return  # already counted (a duplicate handler call, or the sweep got there first)
        if execution.is_terminal:
            # The workflow already ended (a paused or pending workflow is canceled at once): record how the
            # task ended, follow none of its transitions.
            if te.status not in IN_FLIGHT_TASK:
                return
            if te.items_total is None:
                if te.execution_id in (None, child.pk):
                    status = CHILD_TO_TASK.get(child.status, T.FAILED)
                    _end_task(te, status, child.result,
                              error="" if status == T.SUCCEEDED else f"{child.action_ref} {child.status}")
                return
            TaskExecution.objects.filter(pk=te.pk).update(items_done=F("items_done") + 1)
            te.items_done += 1
            if te.items_done >= te.items_started:
                _end_task(te, T.CANCELED, _item_results(te), error="canceled")
            return
        if te.status not in IN_FLIGHT_TASK:
            _maybe_finish(wf, execution, None)  # the task ended otherwise (timeout, cancel): maybe the workflow too
            return
        if execution.status == S.PENDING:
            transition(execution, to=S.RUNNING, from_=S.PENDING)
        step = _step(wf, execution)
        if te.items_total is not None:
            _item_finished(wf, execution, step, te, child)
        else:
            _single_finished(wf, execution, step, te, child)
        _maybe_finish(wf, execution, step)


def child_pending(child: Execution) -> None:
    """A child went ``pending`` (an inquiry): its task is pending; the workflow too if nothing else runs."""
    if child.task_execution_id is None:
        return
    with transaction.atomic():
        locked = _lock(child.task_execution_id, [T.RUNNING])
        if locked is None:
            return
        execution, wf, te = locked
        if te.items_total is not None or te.execution_id != child.pk:
            return
        TaskExecution.objects.filter(pk=te.pk).update(status=T.PENDING, updated=timezone.now())
        te.status = T.PENDING
        _notify(te)
        if not TaskExecution.objects.filter(workflow_execution=wf, status__in=[T.READY, T.RUNNING]).exists():
            transition(execution, to=S.PENDING, from_=S.RUNNING)


# --- operations -----------------------------------------------------------------------------------------

def pause(execution: Execution) -> Execution:
    """No new task starts; running ones finish; then ``paused``. Nested workflows pause too."""
    if execution.runner_type != "workflow":
        raise executions.ExecutionStateError(f"execution {execution.pk} is not a workflow: only workflows pause")
    with transaction.atomic():
        if not transition(execution, to=S.PAUSING, from_=[S.RUNNING, S.PENDING]):
            execution.refresh_from_db()
            raise executions.ExecutionStateError(f"execution {execution.pk} is {execution.status}: cannot pause")
        for child in Execution.objects.filter(parent=execution, runner_type="workflow",
                                              status__in=[S.RUNNING, S.PENDING]):
            try:
                pause(child)
            except executions.ExecutionStateError:
                pass
        wf = WorkflowExecution.objects.filter(execution=execution).first()
        if wf is not None:
            _maybe_finish(wf, execution, None)
    execution.refresh_from_db()
    return execution


def resume(execution: Execution) -> Execution:
    """Back to ``running``: start what the pause held back (ready tasks, with-items items)."""
    if execution.runner_type != "workflow":
        raise executions.ExecutionStateError(f"execution {execution.pk} is not a workflow: only workflows resume")
    with transaction.atomic():
        execution = _locked_execution(execution.pk)
        if not transition(execution, to=S.RUNNING, from_=[S.PAUSING, S.PAUSED]):
            raise executions.ExecutionStateError(f"execution {execution.pk} is {execution.status}: cannot resume")
        for child in Execution.objects.filter(parent=execution, runner_type="workflow",
                                              status__in=[S.PAUSING, S.PAUSED]):
            try:
                resume(child)
            except executions.ExecutionStateError:
                pass
        wf = WorkflowExecution.objects.get(execution=execution)
        _start_held(wf, execution)
    execution.refresh_from_db()
    return execution


def after_cancel(execution: Execution) -> None:
    """Cancel requested (children already asked to cancel): tasks not started are canceled, and the
    workflow ends ``canceled`` as soon as nothing runs."""
    if execution.runner_type != "workflow":
        return
    with transaction.atomic():
        wf = WorkflowExecution.objects.filter(execution_id=execution.pk).first()
        if wf is None:
            return
        execution = _locked_execution(execution.pk)
        now = timezone.now()
        if execution.status == S.CANCELED and not (isinstance(execution.result, dict) and "errors" in execution.result):
            # Canceled at once (it was paused, or pending on an inquiry): still a workflow's result.
            wf.refresh_from_db(fields=["errors"])
            output, errors, _ = _final_output(wf, execution, None)
            WorkflowExecution.objects.filter(pk=wf.pk).update(output=output, errors=errors, updated=now)
            Execution.objects.filter(pk=execution.pk).update(result={"output": output, "errors": errors})
        TaskExecution.objects.filter(workflow_execution=wf, status__in=[T.READY, T.WAITING]).update(
            status=T.CANCELED, finished_at=now, updated=now)
        # with-items tasks whose remaining items will now never start
        for te in TaskExecution.objects.filter(workflow_execution=wf, status__in=IN_FLIGHT_TASK,
                                               items_total__isnull=False).defer("items", "result"):
            if te.items_done >= te.items_started:
                _end_task(te, T.CANCELED, _item_results(te), error="canceled")
        _maybe_finish(wf, execution, None)


def rerun_from(original: Execution, task_names: list[str], *, user=None) -> Execution:
    """A new execution of the workflow that starts at ``task_names``, with the variables and the task
    results the original had when it ended (the tasks before are not run again)."""
    wf_old = WorkflowExecution.objects.filter(execution=original).first()
    if wf_old is None or original.action is None:
        raise executions.ExecutionStateError(f"execution {original.pk} is not a workflow that ran")
    if not original.is_terminal:
        raise executions.ExecutionStateError(f"execution {original.pk} is still {original.status}")
    unknown = [n for n in task_names if n not in wf_old.definition.get("tasks", {})]
    if unknown:
        raise ParameterError({"tasks": [f"no task {n!r} in this workflow" for n in unknown]})
    values, mask_values = full_parameters(original)
    with transaction.atomic():
        new = executions.create_execution(original.action, values, user=user, original=original,
                                          timeout=original.timeout, mask_values=mask_values, start=False)
        wf = WorkflowExecution.objects.create(execution=new, definition=wf_old.definition, start_tasks=task_names)
        WorkflowVariable.objects.bulk_create([
            WorkflowVariable(workflow_execution=wf, name=v.name, value=v.value, secret=v.secret)
            for v in wf_old.variables.all()
        ])
        # The latest successful run of every other task, so `tasks.<name>` still answers.
        latest: dict[str, TaskExecution] = {}
        for te in wf_old.tasks.filter(status=T.SUCCEEDED).order_by("id"):
            if te.task_name not in task_names:
                latest[te.task_name] = te
        TaskExecution.objects.bulk_create([
            TaskExecution(workflow_execution=wf, task_name=te.task_name, status=T.SUCCEEDED, attempt=te.attempt,
                          input=te.input, result=te.result, published=te.published, execution=te.execution,
                          started_at=te.started_at, finished_at=te.finished_at, error="copied from the original")
            for te in latest.values()
        ])
        executions.request(new)
    return new


# --- internals: tasks -----------------------------------------------------------------------------------

def _notify(te: TaskExecution) -> None:
    """Live notification of a task run's new state (``type: task`` on ``execution:<workflow id>``). Task rows
    change with ``QuerySet.update()``, which sends no signal, so the conductor says so itself."""
    from apps.notifications.services import task_changed

    task_changed(te)


def _locked_execution(execution_id: int) -> Execution:
    """The workflow's execution row, locked FOR NO KEY UPDATE: children inserted meanwhile (their ``parent``
    foreign key takes a key-share lock) do not wait on it. The parameters (a with-items list can be large) are
    not read: :func:`_step` keeps them per workflow. Hand-written (every step of every workflow runs it); the
    user who started it is loaded with it, the action on first use."""
    return _read_execution(execution_id, lock=True)


def _read_execution(execution_id: int, *, lock: bool = False) -> Execution:
    rows = reader(Execution, "e", write=True, exclude=_DEFERRED_EXECUTION_FIELDS)
    with connections[rows.using].cursor() as cursor:
        cursor.execute(_sql("execution", lambda qn: (
            f"SELECT {rows.columns} FROM {rows.table} e WHERE e.{qn('id')} = %s"
        ), rows.using) + (lock_clause(rows.using, no_key=True) if lock else ""), [execution_id])
        row = cursor.fetchone()
    if row is None:
        raise Execution.DoesNotExist(f"execution {execution_id} does not exist")
    execution = rows.build(row)
    if execution.started_by_id is not None:
        from django.contrib.auth import get_user_model

        execution._state.fields_cache["started_by"] = get_by_pk(get_user_model(), execution.started_by_id)
    return execution


_DEFERRED_EXECUTION_FIELDS = frozenset({"parameters", "secret_parameters"})
def _sql(name: str, build, using: str) -> str:
    """A hand-written statement of this module, built once per database alias (``build(quote_name)``)."""
    return statement(f"workflows.conductor.{name}", using, build)


def _lock(te_id: int, statuses=None):
    """Lock in one order everywhere — the workflow's execution, then the task — so two steps of one
    workflow never deadlock. Returns (execution, workflow execution, task) or None."""
    from . import items

    wf_rows = reader(WorkflowExecution, "w", write=True, exclude=frozenset({"definition"}))
    te_rows = reader(TaskExecution, "t", write=True, exclude=frozenset({"items", "result"}))
    using = te_rows.using
    with connections[using].cursor() as cursor:
        cursor.execute(_sql("ids", lambda qn: (
            f"SELECT t.{qn('workflow_execution_id')}, w.{qn('execution_id')} FROM {te_rows.table} t "
            f"JOIN {wf_rows.table} w ON w.{qn('id')} = t.{qn('workflow_execution_id')} WHERE t.{qn('id')} = %s"
        ), using), [te_id])
        ids = cursor.fetchone()
        if ids is None:
            return None
        wf_id, execution_id = ids
        # NO KEY UPDATE: children inserted meanwhile (their `parent` key-share lock) do not wait on it.
        execution = _locked_execution(execution_id)
        # Read after the lock, so `failing` is current; the definition is an immutable snapshot, cached.
        cursor.execute(_sql("wf", lambda qn: (
            f"SELECT {wf_rows.columns} FROM {wf_rows.table} w WHERE w.{qn('id')} = %s"
        ), using), [wf_id])
        row = cursor.fetchone()
        if row is None:
            return None
        wf = wf_rows.build(row)
        wf.definition = items.definition(wf_id, wf.created)
        params: list[Any] = [te_id]
        where = ""
        if statuses is not None:
            statuses = sorted(statuses)
            where = f" AND t.{connections[using].ops.quote_name('status')} IN ({', '.join(['%s'] * len(statuses))})"
            params += statuses
        cursor.execute(_sql("te", lambda qn: (
            f"SELECT {te_rows.columns} FROM {te_rows.table} t WHERE t.{qn('id')} = %s"
        ), using) + where + lock_clause(using), params)
        row = cursor.fetchone()
    if row is None:
        return None
    return execution, wf, te_rows.build(row)


def _definition_of(execution: Execution) -> dict[str, Any]:
    wd = WorkflowDefinition.objects.filter(action_id=execution.action_id).first()
    if wd is None:
        raise WorkflowError(f"action {execution.action_ref} has no registered workflow definition")
    if not wd.valid:
        raise WorkflowError(f"the workflow of {execution.action_ref} is invalid: {wd.errors}")
    definition = wd.definition
    if "entry" not in definition:  # stored before normalisation existed
        from .language import normalize

        definition = normalize(definition)
    return definition


def _step(wf: WorkflowExecution, execution: Execution) -> StepContext:
    """The step's context. What never changes for a workflow (its parameters and secrets, its pack's
    configuration) is read once per process and kept, so a step does not re-read or re-parse it."""
    from apps.executions.parameters import template_context

    from .items import _LRU

    global _statics
    if _statics is None:
        _statics = _LRU(256)
    found = _statics.get((wf.pk, wf.created))  # (see items.py: an id alone can be reused on SQLite)
    if found is None:
        source = execution
        if {"parameters", "secret_parameters"} & execution.get_deferred_fields():
            source = Execution.objects.only("parameters", "secret_parameters").get(pk=execution.pk)
        parameters, mask_values = full_parameters(source)
        pack, pack_secrets = None, []
        if execution.action is not None:
            ctx, kv = template_context(execution.action, execution.started_by)
            pack, pack_secrets = ctx["pack"], list(kv.tracker.values)
        found = (parameters, mask_values, pack, pack_secrets)
        _statics.put((wf.pk, wf.created), found)
    parameters, mask_values, pack, pack_secrets = found
    step = StepContext(wf, execution, parameters, wf.definition, pack=pack, pack_secrets=pack_secrets)
    step.mask_values = mask_values
    return step


_statics = None


def _inbound(definition: dict[str, Any], name: str) -> int:
    sources = set()
    for other, task in definition["tasks"].items():
        for tr in task.get("next", []):
            if name in tr.get("do", []):
                sources.add(other)
    return len(sources)


def _arrive(wf, execution, step: StepContext, name: str, source: TaskExecution | None) -> None:
    """A transition reached ``name``: create its run (or count a join arrival) and start it when ready."""
    task = wf.definition["tasks"][name]
    join = task.get("join")
    now = timezone.now()
    if join is not None:
        # The open round of the join: its first run that has not yet heard from every inbound branch. With
        # `join: N`, the arrivals after the N-th belong to the round that already started and start nothing;
        # an arrival after all branches arrived opens a new round (a loop leading back into the join).
        total = max(_inbound(wf.definition, name), 1)
        te = (TaskExecution.objects.select_for_update().filter(
            workflow_execution=wf, task_name=name, join_required__isnull=False, join_arrivals__lt=total,
        ).order_by("id").first())
        if te is None:
            required = total if join == "all" else min(max(int(join), 1), total)
            te = TaskExecution.objects.create(workflow_execution=wf, task_name=name, status=T.WAITING,
                                              join_required=required, join_arrivals=0)
        TaskExecution.objects.filter(pk=te.pk).update(join_arrivals=F("join_arrivals") + 1, updated=now)
        te.join_arrivals += 1
        if te.join_arrivals != te.join_required:
            return
        if not TaskExecution.objects.filter(pk=te.pk, status=T.WAITING).update(status=T.READY, updated=now):
            return  # canceled meanwhile
        te.status = T.READY
        _notify(te)
    else:
        te = TaskExecution.objects.create(workflow_execution=wf, task_name=name, status=T.READY)
    if execution.status in STARTABLE and not wf.failing:
        _start_task(wf, execution, step, te)


def _start_task(wf, execution, step: StepContext, te: TaskExecution) -> None:
    """READY → RUNNING: evaluate ``when``, render the input, request the child(ren). Under the task's lock."""
    task = wf.definition["tasks"][te.task_name]
    now = timezone.now()
    if not TaskExecution.objects.filter(pk=te.pk, status=T.READY).update(status=T.RUNNING, started_at=now, updated=now):
        return  # someone else started it
    te.status, te.started_at = T.RUNNING, now
    _notify(te)
    if execution.status == S.PENDING:
        transition(execution, to=S.RUNNING, from_=S.PENDING)
    ctx = step.for_task(None)
    if task.get("when") is not None:
        try:
            go = render_condition(task["when"], ctx)
        except TemplateError as exc:
            _task_done(wf, execution, step, te, T.FAILED, None, error=f"when: {exc}")
            return
        if not go:
            _task_done(wf, execution, step, te, T.SKIPPED, None)
            return
    if task.get("timeout"):
        grace = 5 if not task.get("with_items") else 0
        te.timeout_at = now + timedelta(seconds=int(task["timeout"]) + grace)
        TaskExecution.objects.filter(pk=te.pk).update(timeout_at=te.timeout_at)
    if task.get("with_items") is not None:
        _start_items(wf, execution, step, te, task, ctx)
        return
    try:
        rendered = _render_input(task.get("input") or {}, ctx)
    except TemplateError as exc:
        _task_done(wf, execution, step, te, T.FAILED, None, error=str(exc))
        return
    try:
        child = _request_child(wf, execution, te, task, rendered, None, mask_values=step.secret_values())
    except (ParameterError, executions.ExecutionStateError, WorkflowError) as exc:
        message = _parameter_error_text(exc)
        _task_done(wf, execution, step, te, T.FAILED, {"error": message}, error=message)
        return
    # The input as the child stored it: secret parameters redacted, never in clear here.
    TaskExecution.objects.filter(pk=te.pk).update(execution=child, input=child.parameters)
    te.execution_id, te.input = child.pk, child.parameters


def _render_input(template: dict[str, Any], ctx: dict[str, Any]) -> dict[str, Any]:
    """A task's input rendered key by key, so a template error names its field (``input.message: ...``)."""
    if not isinstance(template, dict):
        return render_value(template, ctx)
    rendered = {}
    for key, value in template.items():
        try:
            rendered[key] = render_value(value, ctx)
        except TemplateError as exc:
            raise TemplateError(f"input.{key}: {exc}") from None
    return rendered


def _action(ref: str):
    from apps.actions.selectors import action_with_runtime

    action = action_with_runtime(ref=ref)
    if action is None:
        raise WorkflowError(f"action {ref} does not exist")
    return action


def _request_child(wf, execution, te, task, parameters, item_index, action=None, mask_values=None) -> Execution:
    """Request the child. An input derived from a secret of the workflow is a secret of the child too:
    stored redacted and encrypted, masked in its output."""
    action = action or _action(task["action"])
    secret_names: set[str] = set()
    if mask_values and isinstance(parameters, dict):
        for name, value in parameters.items():
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            if any(m and m in text for m in mask_values):
                secret_names.add(name)
    timeout = int(task["timeout"]) if task.get("timeout") else None
    return executions.create_execution(
        action, parameters, user=execution.started_by, parent=execution, task_name=te.task_name,
        task_execution_id=te.pk, item_index=item_index, timeout=timeout, mask_values=mask_values,
        secret_names=secret_names,
    )


def _parameter_error_text(exc: Exception) -> str:
    if isinstance(exc, ParameterError):
        return "; ".join(f"{name}: {', '.join(msgs)}" for name, msgs in exc.errors.items())
    return str(exc)


def _start_items(wf, execution, step, te, task, ctx) -> None:
    try:
        _action(task["action"])
    except WorkflowError as exc:
        _task_done(wf, execution, step, te, T.FAILED, {"error": str(exc)}, error=str(exc))
        return
    try:
        items = render_value(task["with_items"], ctx)
    except TemplateError as exc:
        _task_done(wf, execution, step, te, T.FAILED, None, error=f"with_items: {exc}")
        return
    if isinstance(items, dict) or not isinstance(items, list | tuple):
        _task_done(wf, execution, step, te, T.FAILED, None,
                   error=f"with_items: expected a list, got {type(items).__name__}")
        return
    items = list(items)
    batch = task.get("batch_size")
    if batch:
        items = [items[i:i + int(batch)] for i in range(0, len(items), int(batch))]
    concurrency = int(task.get("concurrency") or 0) or None
    TaskExecution.objects.filter(pk=te.pk).update(items=items, items_total=len(items), concurrency=concurrency,
                                                  items_started=0, items_done=0, items_failed=0)
    te.items_total, te.concurrency, te.items_started, te.items_done, te.items_failed = len(items), concurrency, 0, 0, 0
    if not items:
        _task_done(wf, execution, step, te, T.SUCCEEDED, [])
        return
    first = len(items) if concurrency is None else min(concurrency, len(items))
    _launch_items(wf, execution, step, te, task, ctx, [(i, items[i]) for i in range(first)])


def _launch_items(wf, execution, step, te, task, ctx, items: list[tuple[int, Any]]) -> None:
    """Request one child per (index, item). The counter moves in the same transaction as the children."""
    try:
        action = _action(task["action"])
    except WorkflowError as exc:  # deleted since the task started: each item fails on its own
        for index, _item in items:
            _failed_item(wf, execution, te, None, index, str(exc), ref=task["action"])
        TaskExecution.objects.filter(pk=te.pk).update(items_started=F("items_started") + len(items))
        te.items_started += len(items)
        return
    batched = bool(task.get("batch_size"))
    template = task.get("input") or {}
    started = 0
    for index, item in items:
        extra = {"items": item, "batch_index": index} if batched else {"item": item, "index": index}
        item_ctx = dict(ctx)
        item_ctx.update(extra)
        try:
            parameters = _render_input(template, item_ctx)
            _request_child(wf, execution, te, task, parameters, index, action=action, mask_values=step.secret_values())
        except TemplateError as exc:
            # The item fails on its own; it is recorded as a failed child so item order stays intact.
            _failed_item(wf, execution, te, action, index, str(exc))
        except (ParameterError, executions.ExecutionStateError) as exc:
            _failed_item(wf, execution, te, action, index, f"input: {_parameter_error_text(exc)}")
        started += 1
    TaskExecution.objects.filter(pk=te.pk).update(items_started=F("items_started") + started)
    te.items_started += started


def _failed_item(wf, execution, te, action, index: int, message: str, ref: str = "") -> None:
    now = timezone.now()
    ref = action.ref if action is not None else ref
    child = Execution.objects.create(
        action=action, action_ref=ref, pack_ref=action.pack.ref if action is not None else ref.partition(".")[0],
        runner_type=action.runner_type.name if action is not None else "",
        status=S.FAILED, result={"error": message}, parent=execution, started_by=execution.started_by,
        task_name=te.task_name, task_execution_id=te.pk, item_index=index, finished_at=now,
    )
    transaction.on_commit(lambda: child_finished(child))


def _item_finished(wf, execution, step, te, child) -> None:
    failed = child.status != S.SUCCEEDED
    TaskExecution.objects.filter(pk=te.pk).update(
        items_done=F("items_done") + 1, items_failed=F("items_failed") + (1 if failed else 0), updated=timezone.now())
    te.items_done += 1
    te.items_failed += 1 if failed else 0
    # Start the next items, within concurrency, unless paused / canceling / failing.
    if execution.status in STARTABLE and not wf.failing and te.items_started < te.items_total:
        room = te.items_total - te.items_started
        if te.concurrency:
            room = min(room, te.concurrency - (te.items_started - te.items_done))
        if room > 0:
            task = wf.definition["tasks"][te.task_name]
            indexes = range(te.items_started, te.items_started + room)
            _launch_items(wf, execution, step, te, task, step.for_task(None), [(i, _item_at(te, i)) for i in indexes])
    if te.items_done >= te.items_total:
        status = T.SUCCEEDED if te.items_failed == 0 else T.FAILED
        error = f"{te.items_failed} of {te.items_total} items failed" if te.items_failed else ""
        _task_done(wf, execution, step, te, status, _item_results(te), error=error)
    elif te.items_done >= te.items_started and execution.status not in STARTABLE:
        if execution.status == S.CANCELING:
            _end_task(te, T.CANCELED, _item_results(te), error="canceled")
        # pausing: the task waits, RUNNING with no child in flight, until resume starts the next items


def _item_at(te: TaskExecution, index: int) -> Any:
    """One item, read from the stored list without loading the whole list."""
    return (TaskExecution.objects.filter(pk=te.pk).annotate(item=KeyTransform(str(index), "items"))
            .values_list("item", flat=True).get())


def _item_results(te: TaskExecution) -> list[Any]:
    return list(Execution.objects.filter(task_execution_id=te.pk).order_by("item_index", "id")
                .values_list("result", flat=True))


def _single_finished(wf, execution, step, te, child) -> None:
    if te.execution_id is not None and te.execution_id != child.pk:
        return  # an older attempt's child
    status = CHILD_TO_TASK.get(child.status, T.FAILED)
    error = ""
    if status != T.SUCCEEDED:
        result = child.result if isinstance(child.result, dict) else {}
        error = str(result.get("error") or result.get("stderr") or f"{child.action_ref} {child.status}")[:2000]
    _task_done(wf, execution, step, te, status, child.result, error=error)


def _end_task(te: TaskExecution, status: str, result: Any, error: str = "") -> bool:
    now = timezone.now()
    won = TaskExecution.objects.filter(pk=te.pk, status__in=[T.READY, T.RUNNING, T.PENDING]).update(
        status=status, result=result, error=error, finished_at=now, updated=now)
    if won:
        te.status, te.result, te.error, te.finished_at = status, result, error, now
        _notify(te)
    return bool(won)


def _task_done(wf, execution, step: StepContext, te, status: str, result: Any, error: str = "") -> None:
    """The task ended: retry it, or record it and follow its transitions."""
    task = wf.definition["tasks"][te.task_name]
    if status in (T.FAILED, T.TIMEOUT) and _retry(wf, execution, step, te, task, status, result, error):
        return
    if not _end_task(te, status, result, error):
        return
    step.tasks.remember(te)
    _follow(wf, execution, step, te, task)


def _retry(wf, execution, step, te, task, status, result, error) -> bool:
    retry = task.get("retry")
    if not retry or te.attempt > int(retry.get("count") or 0):
        return False
    te.status, te.result, te.error = status, result, error
    if retry.get("when"):
        try:
            if not render_condition(retry["when"], step.for_task(te)):
                return False
        except TemplateError:
            return False
    delay = _backoff(retry, te.attempt)
    _end_task(te, status, result, error=f"{error} (retrying: attempt {te.attempt + 1})".strip())
    again = TaskExecution.objects.create(workflow_execution=wf, task_name=te.task_name, status=T.READY,
                                         attempt=te.attempt + 1, run_after=timezone.now() + timedelta(seconds=delay))
    if delay <= 0 and execution.status in STARTABLE and not wf.failing:
        _start_task(wf, execution, step, again)  # no delay: no wait for the sweep either
    return True


def _backoff(retry: dict[str, Any], attempt: int) -> float:
    delay = float(retry.get("delay") or 0)
    kind = retry.get("backoff") or "constant"
    if kind == "linear":
        delay = delay * attempt
    elif kind == "exponential":
        delay = delay * (2 ** (attempt - 1))
    if retry.get("max_delay") is not None:
        delay = min(delay, float(retry["max_delay"]))
    return max(delay, 0.0)


def _follow(wf, execution, step: StepContext, te: TaskExecution, task: dict[str, Any]) -> None:
    """Evaluate ``next`` in order under the workflow lock: publish, then start the ``do`` tasks."""
    ctx = step.for_task(te)
    handled = False
    published: dict[str, Any] = {}
    for index, tr in enumerate(task.get("next") or []):
        try:
            fire = tr.get("when") is None or bool(render_condition(tr["when"], ctx))
        except TemplateError as exc:
            _mark_failing(wf, te.task_name, f"next[{index}].when: {exc}")
            continue
        if not fire:
            continue
        for name, template in (tr.get("publish") or {}).items():
            try:
                value = render_value(template, ctx)
            except TemplateError as exc:
                _mark_failing(wf, te.task_name, f"next[{index}].publish.{name}: {exc}")
                continue
            _set_var(wf, step, name, value, te)
            published[name] = value
        for target in tr.get("do") or []:
            if target == "fail":
                _mark_failing(wf, te.task_name, f"task {te.task_name} ran the fail command")
                handled = True
            elif target == "noop":
                handled = True
            else:
                handled = True
                if not wf.failing and execution.status != S.CANCELING:
                    _arrive(wf, execution, step, target, te)
    if published:
        TaskExecution.objects.filter(pk=te.pk).update(published=published)
        te.published = published
    if te.status in (T.FAILED, T.TIMEOUT, T.CANCELED) and not handled and execution.status != S.CANCELING:
        _mark_failing(wf, te.task_name, te.error or f"task {te.task_name} {te.status}")


def _set_var(wf, step: StepContext, name: str, value: Any, te: TaskExecution | None) -> None:
    """Store one variable. A value derived from a secret (a secret parameter or key) is stored encrypted."""
    secret = bool(step.kv is not None and step.kv.tracker.taints(value))
    if not secret and step.mask_values:
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        secret = any(m and m in text for m in step.mask_values)
    stored = {SECRET_VAR: get_ring().encrypt(value, SECRET_VAR_AAD)[0]} if secret else value
    WorkflowVariable.objects.update_or_create(workflow_execution=wf, name=name,
                                              defaults={"value": stored, "secret": secret, "task_execution": te})
    step.vars.set(name, value)


def _mark_failing(wf: WorkflowExecution, task_name: str | None, message: str) -> None:
    wf.errors = list(wf.errors or []) + [{"task": task_name, "message": message}]
    wf.failing = True
    WorkflowExecution.objects.filter(pk=wf.pk).update(failing=True, errors=wf.errors, updated=timezone.now())


def _fail_workflow_now(execution, wf, task_name, message) -> None:
    _mark_failing(wf, task_name, message)
    executions.finish(execution, S.FAILED, {"output": None, "errors": wf.errors})


def _start_held(wf: WorkflowExecution, execution: Execution) -> None:
    """After resume: start READY tasks (retries only when due) and top up with-items tasks."""
    step = _step(wf, execution)
    now = timezone.now()
    wf.refresh_from_db(fields=["failing", "errors"])
    if wf.failing:  # an unhandled failure: nothing new starts (_maybe_finish stops what was held)
        _maybe_finish(wf, execution, step)
        return
    for te in TaskExecution.objects.select_for_update().filter(workflow_execution=wf, status=T.READY).order_by("id"):
        if te.run_after is None or te.run_after <= now:
            _start_task(wf, execution, step, te)
    for te in (TaskExecution.objects.select_for_update().defer("items", "result")
               .filter(workflow_execution=wf, status=T.RUNNING, items_total__isnull=False)):
        _top_up(wf, execution, step, te)
    _maybe_finish(wf, execution, step)


def _top_up(wf, execution, step, te) -> None:
    if te.items_started >= (te.items_total or 0):
        return
    room = te.items_total - te.items_started
    if te.concurrency:
        room = min(room, te.concurrency - (te.items_started - te.items_done))
    if room > 0:
        task = wf.definition["tasks"][te.task_name]
        indexes = range(te.items_started, te.items_started + room)
        _launch_items(wf, execution, step, te, task, step.for_task(None), [(i, _item_at(te, i)) for i in indexes])


def _maybe_finish(wf: WorkflowExecution, execution: Execution, step: StepContext | None) -> None:
    """End the workflow when nothing is left to run; complete a pause when nothing is in flight."""
    wf.refresh_from_db(fields=["failing", "errors"])
    execution.refresh_from_db(fields=["status"])
    if execution.is_terminal:
        return
    if execution.status == S.CANCELING:
        now = timezone.now()
        TaskExecution.objects.filter(workflow_execution=wf, status__in=[T.READY, T.WAITING]).update(
            status=T.CANCELED, finished_at=now, updated=now)
        if TaskExecution.objects.filter(workflow_execution=wf, status__in=IN_FLIGHT_TASK).exists():
            return
    elif execution.status in (S.PAUSING, S.PAUSED):
        # In flight: a task with a child running. Not: a with-items task between items, a task whose
        # nested workflow is paused itself.
        if not TaskExecution.objects.filter(workflow_execution=wf, status__in=IN_FLIGHT_TASK).exclude(
                items_total__isnull=False, items_done__gte=F("items_started")).exclude(
                items_total__isnull=True, execution__status=S.PAUSED).exists():
            if TaskExecution.objects.filter(workflow_execution=wf, status__in=ACTIVE_TASK).exists():
                if execution.status == S.PAUSING and transition(execution, to=S.PAUSED, from_=S.PAUSING):
                    if execution.task_execution_id is not None:  # a nested workflow: its parent may be paused now
                        te_id = execution.task_execution_id
                        transaction.on_commit(lambda: _nested_paused(te_id))
                return
        else:
            return
    else:
        if wf.failing:
            _stop_unstarted(wf)
        if TaskExecution.objects.filter(workflow_execution=wf, status__in=ACTIVE_TASK).exists():
            return
    # Nothing active: the workflow ends.
    if execution.status in (S.CANCELING, S.PAUSED) and execution.cancel_requested:
        status = S.CANCELED
    elif wf.failing:
        status = S.FAILED
    else:
        status = S.SUCCEEDED
    output, errors, rendered = _final_output(wf, execution, step)
    if not rendered and status == S.SUCCEEDED:
        status = S.FAILED
    WorkflowExecution.objects.filter(pk=wf.pk).update(output=output, errors=errors, updated=timezone.now())
    if status == S.CANCELED:
        if transition(execution, to=S.CANCELED, result={"output": output, "errors": errors}):
            transaction.on_commit(lambda: executions.announce_finished(execution.pk))
        return
    executions.finish(execution, status, {"output": output, "errors": errors})


def _stop_unstarted(wf: WorkflowExecution) -> None:
    """An unhandled failure: what has not started never will. Ready tasks (a retry waiting for its delay) are
    canceled; a with-items task with no item in flight ends with the items it ran."""
    now = timezone.now()
    TaskExecution.objects.filter(workflow_execution=wf, status=T.READY).update(
        status=T.CANCELED, error="not started: the workflow failed", finished_at=now, updated=now)
    for te in (TaskExecution.objects.select_for_update().defer("items", "result")
               .filter(workflow_execution=wf, status__in=IN_FLIGHT_TASK, items_total__isnull=False,
                       items_done__gte=F("items_started"), items_started__lt=F("items_total"))):
        _end_task(te, T.FAILED if te.items_failed else T.CANCELED, _item_results(te),
                  error=f"stopped after {te.items_done} of {te.items_total} items: the workflow failed")


def _nested_paused(task_execution_id: int) -> None:
    """A nested workflow became paused: its parent, if pausing, may be paused now too."""
    with transaction.atomic():
        locked = _lock(task_execution_id)
        if locked is None:
            return
        execution, wf, _te = locked
        if execution.status == S.PAUSING:
            _maybe_finish(wf, execution, None)


def _final_output(wf: WorkflowExecution, execution: Execution, step: StepContext | None) -> tuple[Any, list, bool]:
    """(output, errors, whether the output rendered) of a workflow that ends."""
    errors = list(wf.errors or [])
    spec_output = wf.definition.get("output")
    if not spec_output:
        return None, errors, True
    step = step or _step(wf, execution)
    try:
        output = render_value(spec_output, step.for_task(None))
        return mask(output, step.secret_values()), errors, True  # the result is stored and shown: no secrets
    except TemplateError as exc:
        return None, errors + [{"task": None, "message": f"output: {exc}"}], False


# --- used by the with-items hot path and the sweep -------------------------------------------------------

def finalize_items(te_id: int) -> bool:
    """A with-items task whose last item is in (or that stopped starting items, with none in flight): end it
    and follow its transitions, or complete the pause / cancel, under the conductor's locks. Idempotent."""
    with transaction.atomic():
        locked = _lock(te_id, IN_FLIGHT_TASK)
        if locked is None:
            return False
        execution, wf, te = locked
        if te.items_total is None:
            return False
        if execution.is_terminal:
            if te.items_done >= te.items_started:
                _end_task(te, T.CANCELED, _item_results(te), error="canceled")
            return True
        step = _step(wf, execution)
        if te.items_done >= te.items_total:
            status = T.SUCCEEDED if te.items_failed == 0 else T.FAILED
            error = f"{te.items_failed} of {te.items_total} items failed" if te.items_failed else ""
            _task_done(wf, execution, step, te, status, _item_results(te), error=error)
        elif te.items_done >= te.items_started and execution.status == S.CANCELING:
            _end_task(te, T.CANCELED, _item_results(te), error="canceled")
        elif te.items_done >= te.items_started and execution.status in STARTABLE and not wf.failing:
            _top_up(wf, execution, step, te)  # resumed meanwhile: start the rest
        _maybe_finish(wf, execution, step)
        return True


def _failed_item_row(execution_id, user, te_id, name, action, index: int, message: str, ref: str = "") -> None:
    """An item that could not even be requested (bad input, action gone): a failed child, so the item's place
    in the result list is kept and its failure counted like any other."""
    ref = action.ref if action is not None else ref
    child = Execution.objects.create(
        action=action, action_ref=ref, pack_ref=action.pack.ref if action is not None else ref.partition(".")[0],
        runner_type=action.runner_type.name if action is not None else "", status=S.FAILED,
        result={"error": message}, parent_id=execution_id, started_by=user, task_name=name, task_execution_id=te_id,
        item_index=index, finished_at=timezone.now(),
    )
    transaction.on_commit(lambda: child_finished(child))


# --- used by the sweep ----------------------------------------------------------------------------------

def start_due(te_id: int) -> bool:
    """Start a READY task (a retry whose delay passed, or one a crash left unstarted)."""
    with transaction.atomic():
        locked = _lock(te_id, [T.READY])
        if locked is None:
            return False
        execution, wf, te = locked
        if execution.status not in STARTABLE or wf.failing:
            _maybe_finish(wf, execution, None)
            return False
        step = _step(wf, execution)
        _start_task(wf, execution, step, te)
        _maybe_finish(wf, execution, step)
        return True


def time_out_task(te_id: int) -> bool:
    """A task ran past its ``timeout``: its children are canceled, it ends ``timeout`` (``on_timeout``)."""
    with transaction.atomic():
        locked = _lock(te_id, IN_FLIGHT_TASK)
        if locked is None:
            return False
        execution, wf, te = locked
        for child in Execution.objects.filter(task_execution_id=te.pk).exclude(status__in=list(TERMINAL)):
            try:
                executions.cancel_execution(child)
            except executions.ExecutionStateError:
                pass
        step = _step(wf, execution)
        task = wf.definition["tasks"][te.task_name]
        result = _item_results(te) if te.items_total is not None else None
        _task_done(wf, execution, step, te, T.TIMEOUT, result,
                   error=f"task {te.task_name} timed out after {task.get('timeout')} s")
        _maybe_finish(wf, execution, step)
        return True


def time_out_workflow(execution_id: int) -> bool:
    with transaction.atomic():
        execution = _locked_execution(execution_id)
        if execution.is_terminal:
            return False
        wf = WorkflowExecution.objects.get(execution=execution)
        for child in execution.children.exclude(status__in=list(TERMINAL)):
            try:
                executions.cancel_execution(child)
            except executions.ExecutionStateError:
                pass
        now = timezone.now()
        TaskExecution.objects.filter(workflow_execution=wf, status__in=[T.READY, T.WAITING, T.RUNNING, T.PENDING]).update(
            status=T.CANCELED, finished_at=now, updated=now)
        message = f"the workflow timed out after {execution.timeout} s"
        wf.errors = list(wf.errors or []) + [{"task": None, "message": message}]
        output, errors, _ = _final_output(wf, execution, None)  # rendered from what ran, like any other end
        WorkflowExecution.objects.filter(pk=wf.pk).update(errors=errors, failing=True, output=output)
        won = transition(execution, to=S.TIMEOUT, result={"output": output, "errors": errors})
        if won:
            transaction.on_commit(lambda: executions.announce_finished(execution.pk))
        return won
