"""Nothing stays running forever: executions of dead workers are abandoned, lost messages re-sent.

- ``reap_abandoned`` (every 5 s): executions still running on a worker that is dead or offline become
  ``abandoned``; if that worker was on this host, its leftover process group is killed.
- ``requeue_stale`` (every 30 s): ``scheduled`` executions no worker claimed for ATTUNE_REQUEUE_SECONDS
  are dispatched again (the claim is conditional, so a duplicate message is harmless).
- ``recover_on_startup``: when a process starts a worker, earlier workers of this host whose pid is gone
  are marked dead, their executions abandoned, and (embedded mode, whose in-memory queue died with the
  process) every scheduled execution is dispatched again.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.core.periodic import on_startup, register
from apps.core.processes import kill_group, pid_alive
from apps.core.statemachine import transition
from apps.core.statuses import ExecutionStatus

from . import services
from .models import Execution, Worker

log = logging.getLogger("attune.recovery")
S = ExecutionStatus
IN_FLIGHT = [S.RUNNING, S.CANCELING, S.PAUSING]




@register("executions.reap_abandoned", every=5)
def reap_abandoned() -> int:
    stuck = Execution.objects.filter(
        status__in=IN_FLIGHT, worker__state__in=[Worker.State.DEAD, Worker.State.OFFLINE]
    ).select_related("worker")
    hostname = socket.gethostname()
    count = 0
    for execution in stuck[:500]:
        worker = execution.worker
        if execution.pid and worker.hostname == hostname:
            kill_group(execution.pid, signal.SIGKILL)
        result = dict(execution.result or {})
        result["error"] = f"worker {worker.name} stopped ({worker.state}) while this execution was {execution.status}"
        with transaction.atomic():
            if services.finish(execution, S.ABANDONED, result, pid=None):
                count += 1
    if count:
        log.warning("abandoned %d execution(s) of dead workers", count)
    return count


@register("executions.requeue_stale", every=30)
def requeue_stale(older_than: float | None = None) -> int:
    seconds = settings.ATTUNE_REQUEUE_SECONDS if older_than is None else older_than
    cutoff = timezone.now() - timedelta(seconds=seconds)
    count = 0
    for execution in Execution.objects.filter(status=S.SCHEDULED, scheduled_at__lt=cutoff).order_by("id")[:1000]:
        # Claim the re-send with a conditional update so two schedulers do not both re-send.
        claimed = Execution.objects.filter(pk=execution.pk, status=S.SCHEDULED,
                                           scheduled_at=execution.scheduled_at).update(scheduled_at=timezone.now())
        if claimed:
            services.dispatch(execution.pk, execution.queue)
            count += 1
    if count:
        log.warning("re-sent %d scheduled execution(s) no worker had claimed", count)
    return count


@on_startup("executions.recover")
def recover_on_startup() -> dict[str, int]:
    hostname = socket.gethostname()
    dead = 0
    for worker in Worker.objects.filter(hostname=hostname, state__in=[Worker.State.ONLINE, Worker.State.STOPPING]):
        if worker.pid != os.getpid() and not pid_alive(worker.pid):
            dead += Worker.objects.filter(pk=worker.pk).update(state=Worker.State.DEAD)
    abandoned = reap_abandoned()
    requeued = requeue_stale(older_than=0) if settings.EMBEDDED else 0
    # Embedded mode has one process: anything it left in flight without a worker row died with it.
    if settings.EMBEDDED:
        # (Workflow executions have no worker by design: their state is in the database, their conductor
        # picks them up again.)
        for execution in Execution.objects.filter(status__in=IN_FLIGHT, worker__isnull=True).exclude(
                runner_type="workflow")[:500]:
            if transition(execution, to=S.ABANDONED, result={"error": "the process running it stopped"}):
                abandoned += 1
    return {"dead_workers": dead, "abandoned": abandoned, "requeued": requeued}
