"""Celery tasks of the executions layer: bodies take ids and re-read rows."""
from __future__ import annotations

from celery import shared_task


@shared_task(name="attune.executions.run", acks_late=True, ignore_result=True, bind=True)
def run_execution(self, execution_id: int) -> str:
    """Run one execution, then the continuations it made runnable on this queue (:mod:`.inline`)."""
    from .executor import execute
    from .inline import run_waiting, worker_scope

    queue = (self.request.delivery_info or {}).get("routing_key")
    with worker_scope(queue):
        outcome = execute(execution_id)
        run_waiting(execute)
    return outcome
