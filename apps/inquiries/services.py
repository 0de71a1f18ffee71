"""Answering, expiring and cancelling inquiries (SPEC §9).

Each way an inquiry ends is one conditional ``UPDATE ... WHERE status = 'pending'``, so an answer, the
timeout job and a cancel can race freely: exactly one of them wins, the others see 409 / do nothing.
The winner then ends the paused execution with :func:`apps.executions.services.finish`, whose completion
hooks resume a workflow waiting on it.

Who may answer:

- the caller needs the ``inquiries:respond`` grant on the inquiry's pack (built-in: operator, editor, admin);
- when the inquiry names ``assignees`` or ``roles``, the caller must also be one of the assignees or hold
  one of the roles (an assignment of the permission set of that name, covering the inquiry's pack);
- an execution may not answer its own inquiry. Attune gives an execution no identity of its own: its
  process gets no credential, and it acts on behalf of the identity that started it (``started_by``,
  passed down to every workflow task; ``kv.user.*`` resolves to that identity's keys). Automation inside
  an execution can therefore only reach the API with an API token, and the token it can reach is its
  starter's. So an answer authenticated by an API token (``Authorization: Token``) of the identity that
  started the inquiry's execution (or any execution above it) is refused. The same person answering
  through an interactive login (JWT, browser session) is a person in the loop and is accepted.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from django.db import transaction
from django.utils import timezone
from jsonschema import Draft202012Validator

from apps.accounts.models import ApiToken
from apps.accounts.permissions import has_grant
from apps.core.periodic import register
from apps.core.statuses import ExecutionStatus, InquiryStatus
from apps.executions import services as executions
from apps.executions.models import Execution

from .models import Inquiry

log = logging.getLogger("attune.inquiries")
S = ExecutionStatus
Q = InquiryStatus
MAX_CHAIN = 64  # ancestors walked for the self-answer rule (workflows nest far less deeply)


class ResponseError(Exception):
    """Base of the refusals below; ``status`` is the HTTP status the API answers with."""

    status = 400

    def __init__(self, message: str, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors or [message]


class NotAllowed(ResponseError):
    status = 403


class NotPending(ResponseError):
    status = 409


class InvalidResponse(ResponseError):
    status = 400


# --- who may answer -------------------------------------------------------------------------------------

def holds_role(user, roles: list[str], pack: str) -> bool:
    if not roles or not user.is_authenticated:
        return False
    for assignment in user.assignments.select_related("permission_set").filter(permission_set__name__in=roles):
        if not assignment.packs or pack in assignment.packs:
            return True
    return False


def started_by_chain(execution: Execution) -> set[int]:
    """Ids of the identities that started this execution and every execution above it."""
    starters: set[int] = set()
    current: Execution | None = execution
    for _ in range(MAX_CHAIN):
        if current is None:
            break
        if current.started_by_id is not None:
            starters.add(current.started_by_id)
        if current.parent_id is None:
            break
        current = Execution.objects.only("id", "parent_id", "started_by_id").filter(pk=current.parent_id).first()
    return starters


def check_may_respond(inquiry: Inquiry, user, auth=None) -> None:
    """Raise :class:`NotAllowed` unless ``user`` (authenticated by ``auth``) may answer ``inquiry``."""
    pack = inquiry.execution.pack_ref
    if not has_grant(user, "inquiries", "respond", pack):
        raise NotAllowed(f"answering inquiries of pack {pack} needs the inquiries:respond grant.")
    if inquiry.assignees or inquiry.roles:
        if user.username not in inquiry.assignees and not holds_role(user, inquiry.roles, pack):
            who = [*(f"user {a}" for a in inquiry.assignees), *(f"role {r}" for r in inquiry.roles)]
            raise NotAllowed(f"inquiry {inquiry.pk} may only be answered by {', '.join(who)}.")
    if isinstance(auth, ApiToken) and auth.user_id in started_by_chain(inquiry.execution):
        raise NotAllowed(
            f"an execution may not answer its own inquiry: this API token belongs to {user.username}, who started "
            f"execution {inquiry.execution_id}. Answer through an interactive login instead."
        )


# --- answering ------------------------------------------------------------------------------------------

def validation_errors(schema: dict, response: Any) -> list[str]:
    """Every way ``response`` breaks ``schema``, each as ``"<field path>: <message>"``."""
    errors = []
    for error in sorted(Draft202012Validator(schema or {}).iter_errors(response), key=lambda e: list(e.path)):
        path = [str(p) for p in error.absolute_path]
        if error.validator == "required" and isinstance(error.instance, dict):
            for name in error.validator_value:
                if name not in error.instance:
                    errors.append(f"{'.'.join([*path, name])}: this field is required")
            continue
        errors.append(f"{'.'.join(path) or '(root)'}: {error.message}")
    return errors


def respond(inquiry: Inquiry, user, response: Any, *, auth=None) -> Inquiry:
    """Record the answer and succeed the execution with ``{response, responded_by, inquiry}``.

    Raises :class:`NotAllowed` (403), :class:`NotPending` (409, already answered, timed out or cancelled)
    or :class:`InvalidResponse` (400, naming each bad field)."""
    check_may_respond(inquiry, user, auth)
    if inquiry.status != Q.PENDING:
        raise NotPending(f"inquiry {inquiry.pk} is {inquiry.status}: it can no longer be answered.")
    errors = validation_errors(inquiry.schema, response)
    if errors:
        raise InvalidResponse("the response does not match the inquiry's schema", errors)
    now = timezone.now()
    with transaction.atomic():
        won = Inquiry.objects.filter(pk=inquiry.pk, status=Q.PENDING).update(
            status=Q.RESPONDED, response=response, responded_by=user, responded_at=now, updated=now
        )
        if not won:
            current = Inquiry.objects.filter(pk=inquiry.pk).values_list("status", flat=True).first()
            raise NotPending(f"inquiry {inquiry.pk} is {current}: it can no longer be answered.")
        execution = Execution.objects.get(pk=inquiry.execution_id)
        result = {"response": response, "responded_by": user.username, "inquiry": inquiry.pk}
        if not executions.finish(execution, S.SUCCEEDED, result, waiting_reason=""):
            # The execution ended some other way (cancelled, abandoned) before its hook closed the inquiry.
            transaction.set_rollback(True)
            raise NotPending(f"execution {execution.pk} is {execution.status}: inquiry {inquiry.pk} is closed.")
    inquiry.refresh_from_db()
    return inquiry


# --- timeouts and cancels -------------------------------------------------------------------------------

def expire(inquiry: Inquiry, now=None) -> bool:
    """End a pending inquiry as ``timeout`` and its execution too. False when something else ended it."""
    now = now or timezone.now()
    with transaction.atomic():
        if not Inquiry.objects.filter(pk=inquiry.pk, status=Q.PENDING).update(status=Q.TIMEOUT, updated=now):
            return False
        execution = Execution.objects.filter(pk=inquiry.execution_id).first()
        if execution is not None and not execution.is_terminal:
            executions.finish(execution, S.TIMEOUT, {
                "error": f"inquiry {inquiry.pk} was not answered before {inquiry.timeout_at.isoformat()}",
                "inquiry": inquiry.pk,
            }, waiting_reason="")
    return True


@register("inquiries.expire", every=1)
def expire_due(limit: int = 500) -> int:
    """Scheduler job: time out every pending inquiry past its ``timeout_at``."""
    now = timezone.now()
    due = Inquiry.objects.filter(status=Q.PENDING, timeout_at__lte=now).order_by("timeout_at")[:limit]
    count = sum(1 for inquiry in due if expire(inquiry, now))
    if count:
        log.info("timed out %d inquir%s", count, "y" if count == 1 else "ies")
    return count


def close_for_finished_execution(execution: Execution) -> None:
    """Completion hook: an execution that ended without an answer (cancelled, timed out, abandoned by its
    worker) closes its still-pending inquiry, which can then no longer be answered."""
    if execution.runner_type not in inquiry_runtime_names():
        return
    status = Q.TIMEOUT if execution.status == S.TIMEOUT else Q.CANCELED
    Inquiry.objects.filter(execution_id=execution.pk, status=Q.PENDING).update(status=status, updated=timezone.now())


_runtime_names: tuple[float, frozenset[str]] = (0.0, frozenset())
RUNTIME_NAMES_TTL = 30.0


def inquiry_runtime_names() -> frozenset[str]:
    """Names of the runtimes of kind ``inquiry`` (``inquiry`` itself, plus any an admin added), re-read at
    most every 30 s: the hook runs for every finished execution and must not cost a query each time."""
    global _runtime_names
    from apps.packs.models import Runtime, RuntimeKind

    read_at, names = _runtime_names
    if time.monotonic() - read_at > RUNTIME_NAMES_TTL:
        names = frozenset({"inquiry", *Runtime.objects.filter(kind=RuntimeKind.INQUIRY).values_list("name", flat=True)})
        _runtime_names = (time.monotonic(), names)
    return names
