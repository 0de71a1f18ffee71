"""Receivers that publish without their producers calling anything:

- every save of an Inquiry (its creation by the ``inquiry`` runner) and of a TaskExecution (post_save);
- the end of an inquiry's execution (completion hook): answering, timing out and cancelling an inquiry all
  end its execution, and the inquiry row is final by then (the inquiries app's own completion hook, which
  closes a cancelled inquiry, is registered before this one).
"""
from __future__ import annotations

from . import services


def inquiry_saved(sender, instance, raw=False, **kwargs) -> None:
    if not raw:  # not while loading fixtures
        services.inquiry_changed(instance)


def task_saved(sender, instance, raw=False, **kwargs) -> None:
    if not raw:
        services.task_changed(instance)


def execution_finished(execution) -> None:
    from apps.inquiries.models import Inquiry
    from apps.inquiries.services import inquiry_runtime_names

    if execution.runner_type not in inquiry_runtime_names():  # cached: no query for other executions
        return
    inquiry = Inquiry.objects.filter(execution_id=execution.pk).select_related("responded_by").first()
    if inquiry is not None:
        inquiry._state.fields_cache["execution"] = execution
        services.inquiry_changed(inquiry)
