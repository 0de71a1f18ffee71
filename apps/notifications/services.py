"""Publishing live notifications (SPEC §11): what is sent, on which topics, when.

Every message is one JSON object ``{"topic", "type", "id", ..., "seq"}``; ``seq`` counts the messages of
its topic (1, 2, 3, … with no holes), so a subscriber can tell when it missed some. Nothing is written to
the database for a notification: the state it describes is already there (``Execution``, ``OutputChunk``,
``TaskExecution``, ``Inquiry``), and that is what a subscriber resyncs from (see consumers.py). Changes
made inside a transaction are published after it commits (in commit order), never if it rolls back.

Producers:

- :func:`execution_transitioned` — every status change won by :func:`apps.core.statemachine.transition`
  (registered in apps.py), type ``status`` on ``execution:<id>``, ``executions`` and ``executions:<pack>``;
- :func:`output_chunk` — every output chunk :class:`apps.executions.executor.LiveOutput` stores, type
  ``output`` on ``execution:<id>``;
- :func:`inquiry_changed` — type ``inquiry`` on ``execution:<id>``, ``inquiries`` and ``inquiries:<pack>``:
  called on every save of an Inquiry (its creation) and when its execution ends (answered, timed out,
  cancelled: see receivers.py), so the inquiries code needs no call of its own;
- :func:`task_changed` — type ``task`` on ``execution:<workflow execution id>``: called on every save of a
  TaskExecution; the conductor changes tasks with ``QuerySet.update()`` and calls it after those.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.db import transaction

from apps.core.statuses import TERMINAL

from .transport import get_transport, group_name  # noqa: F401  (group_name: part of this module's API)

log = logging.getLogger("attune.notifications")

# How long a topic's seq counter is kept after its last message (seconds; 0: forever). A client resuming
# after that sees the counter restart and resyncs from the snapshot / REST.
TTL_ACTIVE = 86400
TTL_ENDED = 600
TTL_FOREVER = 0

_last_failure_logged = 0.0


def iso(value: datetime | None) -> str | None:
    """ISO 8601 the way the REST API writes it (UTC as ``Z``)."""
    if value is None:
        return None
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


Message = tuple[Sequence[tuple[str, int]], dict[str, Any]]  # ((topic, counter ttl), ...), body


class _Outbox:
    """The messages of one transaction, sent together after it commits, by one callback registered at the
    first of them. So they go before anything registered later in the transaction, in particular the run
    messages of the executions it scheduled (apps.executions.services batches those the same way): a
    ``scheduled`` status always precedes the ``running`` that a worker may publish as soon as it has one."""

    def __init__(self, connection) -> None:
        self.connection = connection
        self.messages: list[Message] = []
        self.hooks = connection.run_on_commit  # replaced by Django when a savepoint is rolled back

    def registered(self) -> bool:
        if self.connection.run_on_commit is self.hooks:
            return True  # no savepoint rolled back since: the flush is still there
        self.hooks = self.connection.run_on_commit
        return any(entry[1] == self.flush for entry in self.hooks)

    def flush(self) -> None:
        if getattr(self.connection, "_attune_notifications", None) is self:
            self.connection._attune_notifications = None
        send_now(self.messages)


def publish(topics: Sequence[tuple[str, int]], body: dict[str, Any]) -> None:
    """Send ``body`` on each ``(topic, counter ttl)`` once the current transaction commits (at once outside
    one). Never raises: a notification that cannot be sent is logged and dropped. A message published in a
    savepoint that is rolled back while the outer transaction commits is still sent (like the run messages
    of the executions scheduled there)."""
    connection = transaction.get_connection()
    if not connection.in_atomic_block:
        send_now([(topics, body)])
        return
    outbox = getattr(connection, "_attune_notifications", None)
    if outbox is None or not outbox.registered():
        outbox = connection._attune_notifications = _Outbox(connection)
        transaction.on_commit(outbox.flush)
    outbox.messages.append((topics, body))


def send_now(messages: list[Message]) -> list[list[int]]:
    global _last_failure_logged
    try:
        return get_transport().send_many(messages)
    except Exception:
        now = time.monotonic()
        if now - _last_failure_logged > 60:  # one warning a minute: a Redis outage must not flood the log
            _last_failure_logged = now
            topics = sorted({t for message_topics, _ in messages for t, _ in message_topics})
            log.warning("could not publish %d notification(s) on %s", len(messages), topics[:10], exc_info=True)
        return []


# --- executions -----------------------------------------------------------------------------------------

def status_fields(execution) -> dict[str, Any]:
    return {
        "type": "status",
        "id": execution.pk,
        "status": execution.status,
        "action_ref": execution.action_ref,
        "pack_ref": execution.pack_ref,
        "parent": execution.parent_id,
        "created": execution.created,  # datetimes: formatted when encoded (transport.encode)
        "scheduled_at": execution.scheduled_at,
        "started_at": execution.started_at,
        "finished_at": execution.finished_at,
    }


def execution_topics(execution_id: int, pack_ref: str, status: str) -> tuple[tuple[str, int], ...]:
    ttl = TTL_ENDED if status in TERMINAL else TTL_ACTIVE
    return ((f"execution:{execution_id}", ttl), ("executions", TTL_FOREVER), (f"executions:{pack_ref}", TTL_FOREVER))


def execution_transitioned(execution) -> None:
    """statemachine listener: runs inside the caller's transaction, right after its UPDATE won. The payload
    is taken now (from the instance the transition updated), the message is sent after commit."""
    try:
        publish(execution_topics(execution.pk, execution.pack_ref, execution.status), status_fields(execution))
    except Exception:  # a notification must never break a status change
        log.exception("could not prepare the status notification of execution %s", execution.pk)


def output_chunk(execution_id: int, stream: str, offset: int, data: str) -> None:
    """LiveOutput listener: ``data`` (already masked) starts at byte ``offset`` of ``stream``."""
    try:
        publish(((f"execution:{execution_id}", TTL_ACTIVE),),
                {"type": "output", "id": execution_id, "stream": stream, "offset": offset, "data": data})
    except Exception:
        log.exception("could not prepare the output notification of execution %s", execution_id)


# --- inquiries ------------------------------------------------------------------------------------------

def inquiry_fields(inquiry, pack_ref: str) -> dict[str, Any]:
    responded_by = None
    if inquiry.responded_by_id is not None:
        responded_by = inquiry.responded_by.username
    # The answer itself is left out: execution:<id> subscribers need only executions:view, and REST has it.
    return {
        "type": "inquiry",
        "id": inquiry.pk,
        "execution": inquiry.execution_id,
        "pack_ref": pack_ref,
        "status": inquiry.status,
        "prompt": inquiry.prompt,
        "schema": inquiry.schema,
        "assignees": inquiry.assignees,
        "roles": inquiry.roles,
        "responded_by": responded_by,
        "responded_at": iso(inquiry.responded_at),
        "timeout_at": iso(inquiry.timeout_at),
        "created": iso(inquiry.created),
    }


def inquiry_changed(inquiry) -> None:
    """Publish an inquiry's current state (created, answered, timed out, cancelled) on ``inquiries``,
    ``inquiries:<pack>`` and ``execution:<id>``. Creation (a save) and the end of its execution publish by
    themselves (receivers.py); call this only for another change made with ``QuerySet.update()``."""
    try:
        from apps.executions.models import Execution

        execution = inquiry._state.fields_cache.get("execution")
        if execution is not None:
            pack_ref = execution.pack_ref
        else:
            pack_ref = Execution.objects.filter(pk=inquiry.execution_id).values_list("pack_ref", flat=True).first()
        if pack_ref is None:
            return
        ttl = TTL_ACTIVE if inquiry.status == "pending" else TTL_ENDED
        publish(((f"execution:{inquiry.execution_id}", ttl), ("inquiries", TTL_FOREVER),
                 (f"inquiries:{pack_ref}", TTL_FOREVER)), inquiry_fields(inquiry, pack_ref))
    except Exception:
        log.exception("could not prepare the notification of inquiry %s", getattr(inquiry, "pk", None))


# --- workflow tasks -------------------------------------------------------------------------------------

TASK_COUNTERS = ("attempt", "items_total", "items_started", "items_done", "items_failed")
TASK_FIELDS = ("task_name", "status", *TASK_COUNTERS, "execution_id", "started_at", "finished_at",
               "workflow_execution_id")
_workflow_executions: OrderedDict[int, int] = OrderedDict()  # WorkflowExecution id -> Execution id (immutable)
_WORKFLOW_CACHE_SIZE = 10_000


def _workflow_execution_id(task) -> int | None:
    cached = task._state.fields_cache.get("workflow_execution")
    if cached is not None:
        return cached.execution_id
    known = _workflow_executions.get(task.workflow_execution_id)
    if known is not None:
        return known
    from apps.workflows.models import WorkflowExecution

    execution_id = (WorkflowExecution.objects.filter(pk=task.workflow_execution_id)
                    .values_list("execution_id", flat=True).first())
    if execution_id is not None:
        _workflow_executions[task.workflow_execution_id] = execution_id
        while len(_workflow_executions) > _WORKFLOW_CACHE_SIZE:
            _workflow_executions.popitem(last=False)
    return execution_id


def task_fields(task) -> dict[str, Any]:
    values = {name: getattr(task, name, None) for name in TASK_FIELDS}
    if any(not isinstance(values[name], (int, type(None))) for name in TASK_COUNTERS) \
            or not isinstance(values["status"], str):
        # An instance updated with F() expressions (``items_done=F("items_done") + 1``): read the real values.
        from apps.workflows.models import TaskExecution

        values = TaskExecution.objects.filter(pk=task.pk).values(*TASK_FIELDS).first() or values
    return {
        "type": "task",
        "id": task.pk,
        "task": values["task_name"],
        "status": values["status"],
        "attempt": values["attempt"],
        "child": values["execution_id"],
        "items_total": values["items_total"],
        "items_started": values["items_started"],
        "items_done": values["items_done"],
        "items_failed": values["items_failed"],
        "started_at": iso(values["started_at"]),
        "finished_at": iso(values["finished_at"]),
    }


def task_changed(task_execution) -> None:
    """Publish a workflow task's current state on ``execution:<workflow execution id>`` (type ``task``;
    ``execution`` names the workflow's execution). Saves publish by themselves (a post_save receiver); call
    this after changing a task with ``QuerySet.update()``. Fields holding F() expressions are re-read."""
    try:
        execution_id = _workflow_execution_id(task_execution)
        if execution_id is None:
            return
        body = task_fields(task_execution)
        body["execution"] = execution_id
        publish(((f"execution:{execution_id}", TTL_ACTIVE),), body)
    except Exception:
        log.exception("could not prepare the notification of task execution %s", getattr(task_execution, "pk", None))
