"""The conductor's repair sweep (a scheduler job): what a crash or a lost message can leave behind.

- a child that ended but whose end the conductor never counted (the worker died between the two commits,
  or the handler failed): counted now — :func:`conductor.child_finished` is idempotent;
- a task ``ready`` whose retry delay has passed, or one a crash left unstarted: started (retries wait here,
  in the database, not in a Celery countdown);
- a task past its ``timeout``: timed out (children canceled, ``on_timeout`` followed);
- a workflow past its execution ``timeout``: ends ``timeout``.
Each query is indexed and bounded; each repair takes the same locks as the normal path.
"""
from __future__ import annotations

import logging
from datetime import timedelta

from django.db.models import F, Q
from django.utils import timezone

from apps.core.periodic import register
from apps.core.statuses import TERMINAL, ExecutionStatus, TaskStatus
from apps.executions.models import Execution

from . import conductor
from .models import TaskExecution

log = logging.getLogger("attune.workflows")
S = ExecutionStatus
T = TaskStatus
GRACE = timedelta(seconds=2)  # the normal path gets this long before the sweep steps in
BATCH = 500


@register("workflows.sweep", every=1)
def sweep() -> dict[str, int]:
    now = timezone.now()
    counts = {"reported": 0, "started": 0, "finalized": 0, "task_timeouts": 0, "workflow_timeouts": 0}
    unreported = (Execution.objects.filter(task_reported=False, task_execution_id__isnull=False,
                                           status__in=list(TERMINAL), finished_at__lt=now - GRACE)
                  .order_by("finished_at")[:BATCH])
    for child in unreported:
        conductor.child_finished(child)
        counts["reported"] += 1
    due = (TaskExecution.objects.filter(status=T.READY)
           .filter(Q(run_after__lte=now) | Q(run_after__isnull=True, updated__lt=now - GRACE))
           .filter(workflow_execution__execution__status__in=[S.RUNNING, S.PENDING])
           .values_list("pk", flat=True)[:BATCH])
    for te_id in list(due):
        counts["started"] += bool(conductor.start_due(te_id))
    # with-items tasks whose last item was counted but that were not finalised (the process died between)
    finished_items = TaskExecution.objects.filter(
        status__in=[T.RUNNING, T.PENDING], items_total__isnull=False, items_done__gte=F("items_total"),
        updated__lt=now - GRACE).values_list("pk", flat=True)[:BATCH]
    for te_id in list(finished_items):
        counts["finalized"] += bool(conductor.finalize_items(te_id))
    # ... and those that stopped starting items (unhandled failure, cancel, pause) with none left in flight
    stopped_items = TaskExecution.objects.filter(
        status__in=[T.RUNNING, T.PENDING], items_total__isnull=False, items_done__gte=F("items_started"),
        items_started__lt=F("items_total"), updated__lt=now - GRACE,
    ).filter(Q(workflow_execution__failing=True, workflow_execution__execution__status__in=[S.RUNNING, S.PENDING])
             | Q(workflow_execution__execution__status__in=[S.CANCELING, S.PAUSING])).values_list("pk", flat=True)[:BATCH]
    for te_id in list(stopped_items):
        counts["finalized"] += bool(conductor.finalize_items(te_id))
    late = TaskExecution.objects.filter(status__in=[T.RUNNING, T.PENDING], timeout_at__lt=now).values_list(
        "pk", flat=True)[:BATCH]
    for te_id in list(late):
        counts["task_timeouts"] += bool(conductor.time_out_task(te_id))
    with_timeout = Execution.objects.filter(
        runner_type="workflow", timeout__isnull=False, started_at__isnull=False,
        status__in=[S.RUNNING, S.PENDING, S.PAUSING, S.PAUSED],
    ).values_list("pk", "started_at", "timeout")[:BATCH]
    for execution_id, started_at, timeout in list(with_timeout):
        if started_at + timedelta(seconds=timeout) < now:
            counts["workflow_timeouts"] += bool(conductor.time_out_workflow(execution_id))
    if counts["reported"] or counts["finalized"] or counts["task_timeouts"] or counts["workflow_timeouts"]:
        log.info("workflow sweep: %s", counts)
    return counts
