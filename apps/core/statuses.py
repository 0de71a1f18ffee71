"""Execution statuses and the one transitions table (SPEC §2).

Every status change goes through :func:`apps.core.statemachine.transition`, which performs
``UPDATE ... WHERE id = %s AND status IN (<allowed sources>)`` and reports whether this caller won.
"""
from __future__ import annotations

from django.db import models


class ExecutionStatus(models.TextChoices):
    REQUESTED = "requested"
    DELAYED = "delayed"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    PENDING = "pending"
    PAUSING = "pausing"
    PAUSED = "paused"
    CANCELING = "canceling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELED = "canceled"
    ABANDONED = "abandoned"


S = ExecutionStatus

TERMINAL: frozenset[str] = frozenset({S.SUCCEEDED, S.FAILED, S.TIMEOUT, S.CANCELED, S.ABANDONED})
ACTIVE: frozenset[str] = frozenset(set(S.values) - TERMINAL)

# target status -> statuses it may be entered from. The single source of truth for the lifecycle.
TRANSITIONS: dict[str, frozenset[str]] = {
    S.REQUESTED: frozenset({S.DELAYED}),  # a delayed execution re-enters admission when a slot frees
    S.DELAYED: frozenset({S.REQUESTED}),
    S.SCHEDULED: frozenset({S.REQUESTED, S.DELAYED}),
    S.RUNNING: frozenset({S.SCHEDULED, S.PENDING, S.PAUSING, S.PAUSED}),  # resume a (pausing) workflow
    S.PENDING: frozenset({S.RUNNING}),
    S.PAUSING: frozenset({S.RUNNING, S.PENDING}),
    S.PAUSED: frozenset({S.PAUSING, S.RUNNING, S.PENDING}),
    S.CANCELING: frozenset({S.RUNNING, S.PENDING, S.PAUSING, S.PAUSED}),
    S.SUCCEEDED: frozenset({S.RUNNING, S.PENDING, S.PAUSING}),  # a pausing workflow whose last task ended
    S.FAILED: frozenset({S.REQUESTED, S.DELAYED, S.SCHEDULED, S.RUNNING, S.PENDING, S.PAUSING, S.CANCELING}),
    S.TIMEOUT: frozenset({S.RUNNING, S.PENDING, S.PAUSING, S.PAUSED}),
    S.CANCELED: frozenset({S.REQUESTED, S.DELAYED, S.SCHEDULED, S.CANCELING, S.PAUSED, S.PENDING}),
    S.ABANDONED: frozenset({S.SCHEDULED, S.RUNNING, S.CANCELING, S.PAUSING}),
}


def allowed_sources(to: str) -> frozenset[str]:
    try:
        return TRANSITIONS[to]
    except KeyError:
        raise ValueError(f"unknown execution status {to!r}") from None


def can_transition(from_: str, to: str) -> bool:
    return from_ in allowed_sources(to)


class InquiryStatus(models.TextChoices):
    PENDING = "pending"
    RESPONDED = "responded"
    TIMEOUT = "timeout"
    CANCELED = "canceled"


class EnforcementStatus(models.TextChoices):
    MATCHED = "matched", "matched, execution created"
    NOT_MATCHED = "not_matched", "criteria did not match"
    FAILED = "failed", "matched, but failed (template or parameter error)"


class TaskStatus(models.TextChoices):
    """Status of one task run inside a workflow execution."""

    WAITING = "waiting"  # a join that has not received enough arrivals yet
    READY = "ready"
    RUNNING = "running"
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELED = "canceled"
    SKIPPED = "skipped"
