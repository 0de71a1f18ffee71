"""Behaviour endpoints shared by the actions and executions APIs."""
from __future__ import annotations

from django.db import transaction
from rest_framework import serializers, status
from rest_framework.response import Response

from apps.accounts.audit import record
from apps.core.api.errors import Conflict
from apps.executions import services
from apps.executions.parameters import ParameterError

from .serializers import ExecutionSerializer


def start(request, action, data: dict) -> Response:
    """Create and request an execution; 400 names each bad parameter, 409 for a disabled action."""
    try:
        # The execution and its audit event commit together (one transaction, one commit); the run message
        # leaves after that commit.
        with transaction.atomic():
            execution = services.create_execution(
                action, data.get("parameters") or {}, user=request.user, timeout=data.get("timeout")
            )
            record(request.user, "execution.create", obj=execution, request=request,
                   action_ref=execution.action_ref)
    except ParameterError as exc:
        raise serializers.ValidationError({"parameters": exc.errors}) from None
    except services.ExecutionStateError as exc:
        raise Conflict(str(exc)) from None
    execution.children_ids = []  # new: it has none yet (the serializer would query for them)
    return Response(ExecutionSerializer.represent(execution), status=status.HTTP_201_CREATED)
