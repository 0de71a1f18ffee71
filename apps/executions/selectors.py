"""Read-side queries over executions."""
from __future__ import annotations

from apps.core.statuses import ExecutionStatus

from .models import Execution


def queue_position(execution: Execution) -> int:
    """1-based position among the delayed executions of the same action and policy (FIFO by id)."""
    return (
        Execution.objects.filter(
            action_ref=execution.action_ref,
            policy_id=execution.policy_id,
            status=ExecutionStatus.DELAYED,
            id__lt=execution.pk,
        ).count()
        + 1
    )
