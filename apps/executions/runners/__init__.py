"""Runners: how an execution's work is done. Runners know nothing of DRF or Celery.

A runner gets a :class:`RunContext` and returns an :class:`Outcome`. Process runners (shell, python,
node) start a child in its own process group; in-process runners (noop, http) do the work in the worker
thread. Higher layers add runners for their own kinds (``inquiry``, ``workflow``) with :func:`register`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass
class Outcome:
    status: str  # a terminal status, or "pending" for runners that wait on something outside
    result: Any = None


@dataclass
class RunContext:
    execution_id: int
    action_ref: str
    pack_ref: str
    pack_path: Path
    runtime_kind: str
    interpreter: str
    entry_point: str
    parameters: dict[str, Any]
    parameter_format: str
    output_format: str
    timeout: float
    cancel_requested: Callable[[], bool]
    on_output: Callable[[str, int, str], None] | None = None  # (stream, offset, text) while running
    on_long_running: Callable[[int], None] | None = None  # (pid) once the process has run ~0.25 s
    env: dict[str, str] = field(default_factory=dict)


class Runner(Protocol):
    def run(self, ctx: RunContext) -> Outcome: ...


_registry: dict[str, Runner] = {}


def register(kind: str, runner: Runner) -> None:
    _registry[kind] = runner


def get(kind: str) -> Runner | None:
    from . import inprocess, process  # noqa: F401  (register the built-in runners; imported once)

    return _registry.get(kind)
