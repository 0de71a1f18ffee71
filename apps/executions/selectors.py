"""Read-side queries over executions."""
from __future__ import annotations

from django.db.models import Case, Count, IntegerField, OuterRef, QuerySet, Subquery, Value, When
from django.db.models.functions import Coalesce

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


def with_queue_position(queryset: QuerySet[Execution]) -> QuerySet[Execution]:
    """Annotate ``queue_position`` in the list query itself (one correlated count, only for delayed rows)."""
    ahead = (
        Execution.objects.filter(
            status=ExecutionStatus.DELAYED,
            action_ref=OuterRef("action_ref"),
            id__lt=OuterRef("id"),
        )
        .annotate(policy_key=Coalesce("policy_id", Value(0)))
        .filter(policy_key=Coalesce(OuterRef("policy_id"), Value(0)))
        .order_by()
        .values("action_ref")
        .annotate(n=Count("id"))
        .values("n")
    )
    return queryset.annotate(
        queue_position=Case(
            When(status=ExecutionStatus.DELAYED, then=Coalesce(Subquery(ahead, output_field=IntegerField()), Value(0)) + 1),
            default=None,
            output_field=IntegerField(),
        )
    )
