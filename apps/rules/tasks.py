from __future__ import annotations

from celery import shared_task


@shared_task(name="attune.rules.process_event", acks_late=True, ignore_result=True)
def process_event(event_id: int) -> dict:
    from .engine import process

    return process(event_id)


@shared_task(name="attune.rules.process_events", acks_late=True, ignore_result=True)
def process_events() -> int:
    """The event pump (``engine.pump``): every event still ``received``, in batches."""
    from .engine import pump

    return pump()
