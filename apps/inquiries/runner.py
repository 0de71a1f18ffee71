"""The ``inquiry`` runner (``core.ask``): open an inquiry and leave the execution ``pending`` (SPEC §9).

The runner only records the question; the answer arrives later through ``POST /inquiries/{id}/respond``
(:func:`apps.inquiries.services.respond`), the timeout through the ``inquiries.expire`` scheduler job, and
a cancel through the completion hook. Each of them ends the execution with
:func:`apps.executions.services.finish`.
"""
from __future__ import annotations

from datetime import timedelta

from django.db import IntegrityError, transaction
from django.utils import timezone
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from apps.core.statuses import ExecutionStatus
from apps.executions.runners import Outcome, RunContext

from .models import DEFAULT_SCHEMA, Inquiry

DEFAULT_TIMEOUT = 86400  # seconds, when neither the parameters nor the action name one


def _string_list(value, name: str) -> list[str]:
    if value in (None, ""):
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{name} must be a list of non-empty strings")
    return list(dict.fromkeys(value))  # keep the order, drop duplicates


def inquiry_fields(ctx: RunContext) -> dict:
    """The inquiry row's fields from the action parameters; ValueError names a bad parameter."""
    params = ctx.parameters or {}
    prompt = params.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("prompt must be a non-empty string")
    schema = params.get("schema") or DEFAULT_SCHEMA
    if not isinstance(schema, dict):
        raise ValueError("schema must be a JSON Schema object")
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        raise ValueError(f"schema is not a valid JSON Schema at {where}: {exc.message}") from None
    timeout = params.get("timeout") or ctx.timeout or DEFAULT_TIMEOUT
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ValueError("timeout must be a positive number of seconds")
    return {
        "prompt": prompt,
        "schema": schema,
        "assignees": _string_list(params.get("assignees"), "assignees"),
        "roles": _string_list(params.get("roles"), "roles"),
        "timeout_at": timezone.now() + timedelta(seconds=float(timeout)),
    }


class InquiryRunner:
    def run(self, ctx: RunContext) -> Outcome:
        existing = Inquiry.objects.filter(execution_id=ctx.execution_id).only("id").first()
        if existing is not None:  # a redelivered message, or a retried claim: never a second question
            return Outcome(ExecutionStatus.PENDING, {"inquiry": existing.pk})
        try:
            fields = inquiry_fields(ctx)
        except ValueError as exc:
            return Outcome(ExecutionStatus.FAILED, {"error": f"core.ask: {exc}"})
        try:
            with transaction.atomic():
                inquiry = Inquiry.objects.create(execution_id=ctx.execution_id, **fields)
        except IntegrityError:  # a concurrent run of the same execution created it first
            inquiry = Inquiry.objects.get(execution_id=ctx.execution_id)
        return Outcome(ExecutionStatus.PENDING, {"inquiry": inquiry.pk})
