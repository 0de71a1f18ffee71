"""Behaviour endpoints shared by the actions and executions APIs."""
from __future__ import annotations

from rest_framework import serializers, status
from rest_framework.response import Response

from apps.accounts.audit import event as audit_event
from apps.core.api.errors import Conflict
from apps.executions import services
from apps.executions.parameters import ParameterError

from .serializers import ExecutionSerializer


def start(request, action, data: dict) -> Response:
    """Create and request an execution; 400 names each bad parameter, 409 for a disabled action."""
    try:
        # The execution and its audit event are written together (one statement on PostgreSQL); the run
        # message leaves after that.
        execution = services.create_execution(
            action, data.get("parameters") or {}, user=request.user, timeout=data.get("timeout"),
            audit=audit_event(request.user, "execution.create", request=request, object_type="execution",
                              pack_ref=action.pack.ref, action_ref=action.ref),
        )
    except ParameterError as exc:
        raise serializers.ValidationError({"parameters": exc.errors}) from None
    except services.ExecutionStateError as exc:
        raise Conflict(str(exc)) from None
    execution.children_ids = []  # new: it has none yet (the serializer would query for them)
    return Response(ExecutionSerializer.represent(execution), status=status.HTTP_201_CREATED)
