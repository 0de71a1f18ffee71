"""``core.execution_completed``: every finished execution becomes an event, so rules can chain and notify.

Emitted only while an enabled rule uses the trigger (checked against a short-lived cache), so the common
case of no such rule costs no write per execution.
"""
from __future__ import annotations

import time

from django.db import transaction

from apps.triggers import services as events

from .models import Rule

TRIGGER = "core.execution_completed"
_cache: dict[str, tuple[float, bool]] = {}
CACHE_SECONDS = 2.0


def forget(**_kwargs) -> None:
    """Drop the cached answer (connected to Rule saves and deletes; other processes wait CACHE_SECONDS)."""
    _cache.clear()


def _wanted() -> bool:
    now = time.monotonic()
    cached = _cache.get(TRIGGER)
    if cached is not None and now - cached[0] < CACHE_SECONDS:
        return cached[1]
    wanted = Rule.objects.filter(trigger__ref=TRIGGER, enabled=True).exists()
    _cache[TRIGGER] = (now, wanted)
    return wanted


def summary(result) -> dict | None:
    if not isinstance(result, dict):
        return None
    keep = {k: result[k] for k in ("exit_code", "error", "status_code") if k in result}
    data = result.get("data")
    if data is not None and len(repr(data)) <= 4096:
        keep["data"] = data
    return keep


def execution_completed(execution) -> None:
    if not _wanted():
        return
    payload = {"execution_id": execution.pk, "action": execution.action_ref, "status": execution.status,
               "result": summary(execution.result), "parent": execution.parent_id,
               "rule": execution.rule.ref if execution.rule_id else None}
    with transaction.atomic():
        events.emit(TRIGGER, payload, meta={"source": "system", "execution": execution.pk})
