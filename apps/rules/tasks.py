from __future__ import annotations

from celery import shared_task


@shared_task(name="attune.rules.process_event", acks_late=True, ignore_result=True)
def process_event(event_id: int) -> dict:
    from .engine import process

    return process(event_id)
