"""Execution operations (ENGINEERING principle 2: services own writes).

Higher layers hook in without being imported here:
- :func:`register_admission` — policies decide whether a requested execution may be scheduled now;
- :func:`on_finished` — workflows, notifications, ``core.execution_completed`` react to terminal states.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.db import transaction
from django.utils import timezone

from apps.core.rows import insert, insert_linked
from apps.core.statemachine import announce_transition, transition
from apps.core.statuses import TERMINAL, ExecutionStatus
from attune.celery import app as celery_app

from .inline import offer
from .models import Execution
from .parameters import REDACTED, full_parameters, prepare

log = logging.getLogger("attune.executions")
S = ExecutionStatus

RUN_TASK = "attune.executions.run"
DEFAULT_QUEUE = "attune"

_admission: list[tuple[Callable[[Execution], bool], Callable[[int], bool] | None]] = []
_finished: list[Callable[[Execution], None]] = []
_pending: list[Callable[[Execution], None]] = []
_cancel_requested: list[Callable[[Execution], None]] = []


class ExecutionStateError(Exception):
    """The execution is not in a state that allows the operation (API: 409)."""


def register_admission(hook: Callable[[Execution], bool], applies: Callable[[int], bool] | None = None) -> None:
    """``hook(execution) -> True`` when it took the execution (delayed, canceled); False lets it through.
    ``applies(action_id)`` (optional, cheap) says whether the hook can concern the action at all: when no hook
    applies, a new execution is inserted ``scheduled`` directly."""
    _admission.append((hook, applies))


def on_finished(handler: Callable[[Execution], None]) -> None:
    _finished.append(handler)


def on_pending(handler: Callable[[Execution], None]) -> None:
    """``handler(execution)`` after an execution went ``pending`` (waiting on something outside, e.g. an inquiry)."""
    _pending.append(handler)


def on_cancel_requested(handler: Callable[[Execution], None]) -> None:
    """``handler(execution)`` after :func:`cancel_execution` asked an execution (and its children) to stop."""
    _cancel_requested.append(handler)


def announce_pending(execution: Execution) -> None:
    for handler in _pending:
        try:
            handler(execution)
        except Exception:
            log.exception("pending handler %s failed for execution %s", handler, execution.pk)


def announce_finished(execution_id: int, execution: Execution | None = None) -> None:
    """Run the completion handlers for a terminal execution (after the commit that made it terminal).
    ``execution`` may be the caller's up-to-date instance, saving a re-read."""
    if not _finished:
        return
    if execution is None:
        execution = Execution.objects.filter(pk=execution_id).first()
    if execution is None or not execution.is_terminal:
        return
    for handler in _finished:
        try:
            handler(execution)
        except Exception:  # one broken handler must not stop the others
            log.exception("completion handler %s failed for execution %s", handler, execution_id)


def create_execution(
    action,
    parameters: dict[str, Any] | None = None,
    *,
    user=None,
    parent: Execution | None = None,
    rule=None,
    enforcement=None,
    trigger_event=None,
    original: Execution | None = None,
    task_name: str = "",
    task_execution_id: int | None = None,
    item_index: int | None = None,
    timeout: int | None = None,
    context: dict[str, Any] | None = None,
    start: bool = True,
    secret_names: set[str] | frozenset[str] = frozenset(),
    mask_values: list[str] | None = None,
    audit=None,
) -> Execution:
    """Validate parameters (raises ParameterError naming fields), create the row, and request it.
    ``secret_names``/``mask_values`` carry secrecy over from an earlier execution (re-runs, retries).
    ``audit``: an unsaved audit event (``audit.event``) written with the execution, both or neither, its
    ``object_ref`` set to the new execution's id."""
    if not action.enabled:
        raise ExecutionStateError(f"action {action.ref} is disabled")
    prepared = prepare(action, parameters, user=user, context=context, secret_names=secret_names,
                       mask_values=mask_values)
    runtime = action.runner_type
    # No admission hook (policy) concerns the action: insert it scheduled, one statement instead of two.
    direct = start and not any(applies is None or applies(action.pk) for _, applies in _admission)
    row = Execution(
        status=S.SCHEDULED if direct else S.REQUESTED,
        scheduled_at=timezone.now() if direct else None,
        action=action,
        action_ref=action.ref,
        pack_ref=action.pack.ref,
        runner_type=runtime.name,
        parameters=prepared.stored,
        secret_parameters=prepared.encrypted_secrets(),
        parent=parent,
        rule=rule,
        enforcement=enforcement,
        trigger_event=trigger_event,
        original=original,
        started_by=user if getattr(user, "is_authenticated", False) else None,
        task_name=task_name,
        task_execution_id=task_execution_id,
        item_index=item_index,
        timeout=timeout,
        queue=runtime.queue or DEFAULT_QUEUE,
    )
    if direct:
        # One statement (with its audit event: rows.insert_linked): no transaction (or savepoint, inside the
        # caller's) of its own — on every API call, enforcement and workflow task. If it fails nothing was
        # written here.
        execution = insert(row) if audit is None else insert_linked(row, audit, "object_ref")
        announce_transition(execution)
        _dispatch_after_commit(execution.pk, execution.queue)
        return execution
    with transaction.atomic():
        execution = insert(row) if audit is None else insert_linked(row, audit, "object_ref")
        if start:
            request(execution)
    return execution


def request(execution: Execution) -> None:
    """Admission: a policy may hold (delay) or refuse the execution; otherwise it is scheduled."""
    for hook, _ in _admission:
        if hook(execution):
            return
    schedule(execution)


def schedule(execution: Execution) -> bool:
    won = transition(execution, to=S.SCHEDULED, from_=[S.REQUESTED, S.DELAYED],
                     scheduled_at=timezone.now(), waiting_reason="")
    if won:
        _dispatch_after_commit(execution.pk, execution.queue)
    return won


def _dispatch_after_commit(execution_id: int, queue: str) -> None:
    """Send the run message once the row is committed. Executions scheduled in one transaction (a
    workflow's fan-out, with-items items) are published together, over one producer connection."""
    connection = transaction.get_connection()
    if not connection.in_atomic_block:
        dispatch(execution_id, queue)
        return
    outbox = getattr(connection, "_attune_outbox", None)
    # The batch is live while its flush is still registered (a rolled-back savepoint discards it).
    if outbox is None or not any(entry[1] is outbox[0] for entry in connection.run_on_commit):
        batch: list[tuple[int, str]] = []

        def flush() -> None:
            if getattr(connection, "_attune_outbox", None) is outbox_ref[0]:
                connection._attune_outbox = None
            dispatch_many(batch)

        outbox = (flush, batch)
        outbox_ref = [outbox]
        connection._attune_outbox = outbox
        transaction.on_commit(flush)
    outbox[1].append((execution_id, queue))


def message_reprs(object_id: int) -> dict[str, str]:
    """The message's ``argsrepr``/``kwargsrepr`` headers, what Celery's ``saferepr`` would write for
    ``args=[id]`` (its generic repr costs more than the rest of the header)."""
    return {"argsrepr": f"[{int(object_id)}]", "kwargsrepr": "{}"}


def dispatch(execution_id: int, queue: str, *, inline: bool = True) -> None:
    """Publish the run message of a committed ``scheduled`` execution (or, on a worker running an execution
    of the same queue, keep it to run next on that thread: :mod:`apps.executions.inline`)."""
    queue = queue or DEFAULT_QUEUE
    if inline and offer(execution_id, queue):
        return
    # ignore_result: the outcome lives in the row; without it the Redis backend subscribes per message.
    celery_app.send_task(RUN_TASK, args=[execution_id], queue=queue, ignore_result=True, **message_reprs(execution_id))


def dispatch_many(batch: list[tuple[int, str]], *, inline: bool = True) -> None:
    if inline and batch and offer(batch[0][0], batch[0][1] or DEFAULT_QUEUE):
        batch = batch[1:]
    if not batch:
        return
    if len(batch) == 1:
        dispatch(*batch[0], inline=False)
        return
    with celery_app.producer_or_acquire() as producer:
        for execution_id, queue in batch:
            celery_app.send_task(RUN_TASK, args=[execution_id], queue=queue or DEFAULT_QUEUE, ignore_result=True,
                                 producer=producer, **message_reprs(execution_id))


def finish(execution: Execution, status: str, result: Any, **fields) -> bool:
    """End an execution; a cancel requested meanwhile wins over a late success."""
    sources = [S.RUNNING, S.PENDING, S.PAUSING, S.PAUSED, S.CANCELING]
    from apps.core.statuses import allowed_sources

    won = transition(execution, to=status, from_=[s for s in sources if s in allowed_sources(status)],
                     result=result, **fields)
    if not won and status != S.CANCELED:
        current = Execution.objects.filter(pk=execution.pk).values_list("status", flat=True).first()
        if current == S.CANCELING:
            won = transition(execution, to=S.CANCELED, from_=S.CANCELING, result=result, **fields)
    if won:
        transaction.on_commit(lambda: announce_finished(execution.pk, execution))
    return won


def cancel_execution(execution: Execution) -> Execution:
    """Before running: canceled at once. Running: canceling, and the worker kills the process group.
    Children (workflow tasks, items) are cancelled too."""
    with transaction.atomic():
        if execution.status in TERMINAL:
            raise ExecutionStateError(f"execution {execution.pk} already ended ({execution.status})")
        if execution.status in (S.REQUESTED, S.DELAYED, S.SCHEDULED, S.PENDING, S.PAUSED):
            if transition(execution, to=S.CANCELED, result=execution.result or {"error": "canceled"},
                          waiting_reason=""):
                transaction.on_commit(lambda: announce_finished(execution.pk))
        if not execution.is_terminal:
            transition(execution, to=S.CANCELING, cancel_requested=True)
        for child in execution.children.filter(status__in=list(set(S.values) - TERMINAL)):
            try:
                cancel_execution(child)
            except ExecutionStateError:
                pass
        for handler in _cancel_requested:
            handler(execution)
    execution.refresh_from_db()
    return execution


def rerun_execution(execution: Execution, *, user=None, parameters: dict[str, Any] | None = None) -> Execution:
    """A new execution of the same action with the same (real) parameters, overridden where given."""
    if execution.action is None:
        raise ExecutionStateError(f"action {execution.action_ref} no longer exists")
    values, mask_values = full_parameters(execution)
    secret_names = {name for name, value in (execution.parameters or {}).items() if value == REDACTED}
    values.update(parameters or {})
    return create_execution(execution.action, values, user=user, original=execution, timeout=execution.timeout,
                            secret_names=secret_names - set(parameters or {}), mask_values=mask_values)
