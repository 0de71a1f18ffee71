"""Consistent API errors: ``{"detail": ...}`` or ``{field: [messages]}`` with the right 4xx status."""
from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError
from django.db.models import ProtectedError, RestrictedError
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler


def exception_handler(exc, context):
    if isinstance(exc, DjangoValidationError):
        if hasattr(exc, "message_dict"):
            exc = exceptions.ValidationError(exc.message_dict)
        else:
            exc = exceptions.ValidationError({"detail": exc.messages})
    elif isinstance(exc, (ProtectedError, RestrictedError)):
        blockers = sorted({str(obj) for obj in (exc.protected_objects if isinstance(exc, ProtectedError)
                                                else exc.restricted_objects)})
        shown = ", ".join(blockers[:10]) + (f" and {len(blockers) - 10} more" if len(blockers) > 10 else "")
        return Response({"detail": f"cannot delete: still referenced by {shown}."}, status=status.HTTP_409_CONFLICT)
    elif isinstance(exc, IntegrityError):
        # A unique constraint lost to a concurrent writer: a conflict, not a server error.
        return Response({"detail": f"conflict: {exc}".splitlines()[0]}, status=status.HTTP_409_CONFLICT)
    return drf_exception_handler(exc, context)


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "The resource is not in a state that allows this operation."
    default_code = "conflict"
