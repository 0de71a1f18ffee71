"""The expression context of a workflow step (SPEC §7), built lazily.

``vars`` and ``tasks`` are read from the database by name, on first use, and cached for the step: a
template that uses ``vars.hosts`` reads one row, whatever the size of the whole context and however many
tasks already ran. Nothing is copied per with-items item: an item's context is the step's context plus
``item`` and ``index``.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from django.utils import timezone

from apps.core.statuses import TaskStatus

from .models import TaskExecution, WorkflowVariable

T = TaskStatus
_MISSING = object()
SECRET_VAR = "$encrypted"  # a variable derived from a secret is stored as {"$encrypted": token}
SECRET_VAR_AAD = "attune:workflow-variable"


def stored_value(value: Any) -> Any:
    """The real value of a stored variable (decrypting a secret one)."""
    if isinstance(value, dict) and len(value) == 1 and SECRET_VAR in value:
        from apps.keys.crypto import get_ring

        return get_ring().decrypt(value[SECRET_VAR], SECRET_VAR_AAD)
    return value


class VarsScope(Mapping):
    """``vars``: initial vars plus published values, one row per name."""

    def __init__(self, workflow_execution_id: int) -> None:
        self.wf_id = workflow_execution_id
        self._cache: dict[str, Any] = {}
        self._complete = False

    def __getitem__(self, name: str) -> Any:
        if name in self._cache:
            value = self._cache[name]
        elif self._complete:
            value = _MISSING
        else:
            row = WorkflowVariable.objects.filter(workflow_execution_id=self.wf_id, name=name).values_list(
                "name", "value").first()
            value = stored_value(row[1]) if row is not None else _MISSING
            self._cache[name] = value
        if value is _MISSING:
            raise KeyError(name)
        return value

    def set(self, name: str, value: Any) -> None:
        self._cache[name] = value

    def _load_all(self) -> None:
        if not self._complete:
            for name, value in WorkflowVariable.objects.filter(workflow_execution_id=self.wf_id).values_list(
                    "name", "value"):
                if name not in self._cache:
                    self._cache[name] = stored_value(value)
            self._complete = True

    def __iter__(self) -> Iterator[str]:
        self._load_all()
        return iter([k for k, v in self._cache.items() if v is not _MISSING])

    def __len__(self) -> int:
        self._load_all()
        return sum(1 for v in self._cache.values() if v is not _MISSING)


class TaskView(Mapping):
    """``tasks.<name>``: ``status``, ``result``, ``published``, ``attempt`` of the task's latest run."""

    _KEYS = ("status", "result", "published", "attempt", "error")

    def __init__(self, row: dict[str, Any]) -> None:
        self._row = row

    def __getitem__(self, key: str) -> Any:
        if key not in self._KEYS:
            raise KeyError(key)
        return self._row[key]

    def __iter__(self):
        return iter(self._KEYS)

    def __len__(self) -> int:
        return len(self._KEYS)


class TasksScope(Mapping):
    def __init__(self, workflow_execution_id: int, names: list[str]) -> None:
        self.wf_id = workflow_execution_id
        self.names = names
        self._cache: dict[str, TaskView | None] = {}

    def row(self, name: str) -> dict[str, Any] | None:
        if name not in self._cache:
            row = (TaskExecution.objects.filter(workflow_execution_id=self.wf_id, task_name=name)
                   .order_by("-id").values("status", "result", "published", "attempt", "error").first())
            self._cache[name] = TaskView(row) if row else None
        view = self._cache[name]
        return view._row if view else None

    def remember(self, te: TaskExecution) -> None:
        self._cache[te.task_name] = TaskView({"status": te.status, "result": te.result, "published": te.published,
                                              "attempt": te.attempt, "error": te.error})

    def __getitem__(self, name: str) -> TaskView:
        if name not in self.names:
            raise KeyError(name)
        self.row(name)
        view = self._cache[name]
        if view is None:  # not run (yet): a view that says so, so `tasks.x.status` is usable in conditions
            return TaskView({"status": None, "result": None, "published": {}, "attempt": 0, "error": ""})
        return view

    def __iter__(self):
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def task_functions(te: TaskExecution | None, tasks: TasksScope) -> dict[str, Any]:
    """``succeeded()`` & co. refer to the task whose transitions are being evaluated."""
    status = te.status if te is not None else None

    def succeeded() -> bool:
        return status == T.SUCCEEDED

    def failed() -> bool:
        return status in (T.FAILED, T.CANCELED)

    def timed_out() -> bool:
        return status == T.TIMEOUT

    def completed() -> bool:
        return status in (T.SUCCEEDED, T.FAILED, T.TIMEOUT, T.CANCELED, T.SKIPPED)

    def result() -> Any:
        return te.result if te is not None else None

    def task_status(name: str) -> str | None:
        row = tasks.row(name)
        return row["status"] if row else None

    return {"succeeded": succeeded, "failed": failed, "timed_out": timed_out, "completed": completed,
            "result": result, "task_status": task_status}


class StepContext:
    """Everything one conductor step renders with; built once per step."""

    def __init__(self, wf, execution, parameters: dict[str, Any], definition: dict[str, Any], *,
                 pack: dict[str, Any] | None = None, pack_secrets: list[str] | None = None) -> None:
        from apps.executions.parameters import template_context
        from apps.keys.templating import KV

        self.mask_values: list[str] = []
        self.vars = VarsScope(wf.pk)
        self.tasks = TasksScope(wf.pk, list(definition.get("tasks", {})))
        user = execution.started_by
        base = {}
        if pack is not None:  # known already (conductor._step keeps it per workflow): a fresh kv only
            self.kv = KV(pack=pack["ref"], user=getattr(user, "username", "") or "")
            for value in pack_secrets or []:
                self.kv.tracker.add(value)
            base = {"kv": self.kv, "pack": pack}
        elif execution.action is not None:
            base, self.kv = template_context(execution.action, user)
        else:
            self.kv = None
        defaults = definition.get("input_defaults") or {}
        if defaults:
            parameters = {**defaults, **parameters}
        base.update({
            "parameters": parameters,
            "vars": self.vars,
            "tasks": self.tasks,
            "system": {"execution_id": execution.pk, "workflow_execution_id": wf.pk,
                       "user": getattr(user, "username", None), "now": timezone.now().isoformat(),
                       "timestamp": timezone.now().isoformat()},
        })
        self.base = base

    def secret_values(self) -> list[str]:
        """Plaintexts to keep out of anything stored: the workflow's secret parameters and every secret key a
        template of this step read (``kv``)."""
        tracked = list(self.kv.tracker.values) if self.kv is not None else []
        return [*self.mask_values, *tracked]

    def for_task(self, te: TaskExecution | None, **extra: Any) -> dict[str, Any]:
        ctx = dict(self.base)  # a dozen top-level names: no deep copy
        ctx.update(task_functions(te, self.tasks))
        ctx.update(extra)
        return ctx
