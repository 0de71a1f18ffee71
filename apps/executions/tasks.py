"""Celery tasks of the executions layer: bodies take ids and re-read rows."""
from __future__ import annotations

from celery import shared_task


@shared_task(name="attune.executions.run", acks_late=True, ignore_result=True)
def run_execution(execution_id: int) -> str:
    from .executor import execute

    return execute(execution_id)
