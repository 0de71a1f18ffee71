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
            policy_key=execution.policy_key,
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
            policy_key=OuterRef("policy_key"),
            id__lt=OuterRef("id"),
        )
        .annotate(_policy_slot=Coalesce("policy_id", Value(0)))
        .filter(_policy_slot=Coalesce(OuterRef("policy_id"), Value(0)))
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


def _node(execution: Execution) -> dict:
    return {"id": execution.pk, "action": execution.action_ref, "status": execution.status,
            "task_name": execution.task_name or None, "item_index": execution.item_index,
            "created": execution.created, "started_at": execution.started_at, "finished_at": execution.finished_at}


def trace(execution: Execution, max_nodes: int = 2000) -> dict:
    """``{event, enforcement, root, execution, children}``: the trigger event and enforcement that started the
    top-level execution, and the tree of executions under it (breadth-first, at most ``max_nodes``)."""
    root = execution
    while root.parent_id is not None:
        root = Execution.objects.get(pk=root.parent_id)
    event = root.trigger_event
    enforcement = root.enforcement
    nodes = {root.pk: {**_node(root), "children": []}}
    frontier, truncated = [root.pk], False
    while frontier and not truncated:
        rows = list(Execution.objects.filter(parent_id__in=frontier).order_by("id"))
        frontier = []
        for child in rows:
            if len(nodes) >= max_nodes:
                truncated = True
                break
            nodes[child.pk] = {**_node(child), "children": []}
            nodes[child.parent_id]["children"].append(nodes[child.pk])
            frontier.append(child.pk)
    return {
        "event": None if event is None else {"id": event.pk, "trigger": event.trigger_ref, "payload": event.payload,
                                             "meta": event.meta, "created": event.created},
        "enforcement": None if enforcement is None else {
            "id": enforcement.pk, "rule": enforcement.rule_ref, "status": enforcement.status,
            "criteria": enforcement.criteria, "parameters": enforcement.parameters, "created": enforcement.created},
        "execution": execution.pk,
        "root": nodes[root.pk],
        "truncated": truncated,
    }
