"""What a worker does with one execution id: claim it, run it, record the outcome.

Idempotent: the claim is a conditional ``scheduled → running`` update, so a redelivered or duplicated
message for an execution that already started (or ended) does nothing.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from django.conf import settings
from django.db import close_old_connections, connections, transaction
from django.utils import timezone

from apps.core.rows import reader
from apps.core.statemachine import announce_transition, transition
from apps.core.statuses import ExecutionStatus
from apps.packs.models import RuntimeKind

from . import runners, services, workers
from .models import Execution, OutputChunk
from .parameters import full_parameters, mask
from .runners import Outcome, RunContext

log = logging.getLogger("attune.executions")
S = ExecutionStatus


def pack_directory(pack) -> Path:
    if pack.path:
        return Path(pack.path)
    return Path(settings.ATTUNE_HOME) / "packs" / pack.ref


def base_environment(execution: Execution) -> dict[str, str]:
    """A fresh environment: nothing of the worker's own (it may hold database URLs or keys) leaks in."""
    return {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "ATTUNE_EXECUTION_ID": str(execution.pk),
        "ATTUNE_ACTION": execution.action_ref,
        "ATTUNE_PACK": execution.pack_ref,
        "ATTUNE_API_URL": settings.ATTUNE_API_URL,
    }


def interpreter_and_env(kind: str, runtime, pack, pack_path: Path, env: dict[str, str]) -> str:
    if kind == RuntimeKind.PYTHON:
        from apps.packs.environments import python_interpreter

        python = python_interpreter(pack.ref, pack_path)
        venv = str(Path(python).parent.parent)
        env["VIRTUAL_ENV"] = venv
        env["PATH"] = f"{venv}/bin:{env['PATH']}"
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        return python
    if kind == RuntimeKind.NODE:
        from apps.packs.environments import node_environment, node_executable

        env.update(node_environment(pack.ref, pack_path))
        return node_executable()
    return runtime.interpreter


class LiveOutput:
    """Stores output while it is produced, already masked, with offsets into the masked stream (the same
    text the final result holds). When secrets exist, the last ``len(longest secret) - 1`` characters are
    held back until more output arrives, so a secret split across two reads is still masked.
    Each stored chunk is then passed to the ``listeners`` (live notifications register there)."""

    listeners: list = []  # listener(execution_id, stream, offset, data)

    def __init__(self, execution_id: int, mask_values: list[str]) -> None:
        self.execution_id = execution_id
        self.mask_values = mask_values
        self.hold = max((len(v) for v in mask_values), default=1) - 1
        self.pending: dict[str, str] = {"stdout": "", "stderr": ""}
        self.offsets: dict[str, int] = {"stdout": 0, "stderr": 0}

    def __call__(self, stream: str, _raw_offset: int, text: str) -> None:
        buffered = mask(self.pending[stream] + text, self.mask_values)
        cut = len(buffered) - self.hold if self.hold > 0 else len(buffered)
        ready, self.pending[stream] = buffered[:max(cut, 0)], buffered[max(cut, 0):]
        if not ready:
            return
        offset = self.offsets[stream]
        OutputChunk.objects.create(execution_id=self.execution_id, stream=stream, offset=offset, data=ready)
        self.offsets[stream] = offset + len(ready.encode())
        Execution.objects.filter(pk=self.execution_id).update(**{f"{stream}_size": self.offsets[stream]})
        for listener in self.listeners:
            listener(self.execution_id, stream, offset, ready)


_claim_sql: dict[str, tuple[str, bool]] = {}


def claim(execution_id: int) -> Execution | None:
    """``scheduled → running`` for this worker, returning the claimed row: one ``UPDATE ... RETURNING`` where
    reading the row, then updating it conditionally, took two statements (and an ORM compilation). None when
    the execution is not ``scheduled`` (already claimed by a redelivered message, cancelled, gone).

    On PostgreSQL the same statement also returns the action with its pack and runtime (the update in a
    ``WITH``, joined), which the worker reads right after anyway: one round trip per execution less. The
    action is read in the same snapshot, as fresh as a separate read would be."""
    from apps.actions.models import Action
    from apps.packs.models import Pack, Runtime

    executions = reader(Execution, "c", write=True)
    actions, packs, runtimes = reader(Action, "a", write=True), reader(Pack, "p", write=True), \
        reader(Runtime, "r", write=True)
    connection = connections[executions.using]
    found = _claim_sql.get(executions.using)
    if found is None:
        qn = connection.ops.quote_name
        column = {f.name: qn(f.column) for f in Execution._meta.concrete_fields}
        returning = ", ".join(qn(f.column) for f in Execution._meta.concrete_fields)
        update = (
            f"UPDATE {executions.table} SET {column['status']} = %s, {column['started_at']} = %s, "
            f"{column['worker']} = %s, {column['attempt']} = {column['attempt']} + 1, {column['updated']} = %s "
            f"WHERE {column['id']} = %s AND {column['status']} = %s RETURNING {returning}"
        )
        joined = connection.vendor == "postgresql"
        if joined:
            meta = Action._meta
            pack_fk, runtime_fk = meta.get_field("pack"), meta.get_field("runner_type")
            update = (
                f"WITH c AS ({update}) SELECT {executions.columns}, {actions.columns}, {packs.columns}, "
                f"{runtimes.columns} FROM c "
                f"LEFT JOIN {actions.table} a ON a.{qn(meta.pk.column)} = c.{column['action']} "
                f"LEFT JOIN {packs.table} p ON p.{qn(Pack._meta.pk.column)} = a.{qn(pack_fk.column)} "
                f"LEFT JOIN {runtimes.table} r ON r.{qn(runtime_fk.target_field.column)} = a.{qn(runtime_fk.column)}"
            )
        found = _claim_sql[executions.using] = (update, joined)
    sql, joined = found
    now = timezone.now()
    stamp = Execution._meta.get_field("started_at").get_db_prep_save(now, connection)
    with connection.cursor() as cursor:
        cursor.execute(sql, [S.RUNNING, stamp, workers.current_worker_id(), stamp, execution_id, S.SCHEDULED])
        row = cursor.fetchone()
    if row is None:
        return None
    execution = executions.build(row)
    if joined and execution.action_id is not None:
        offset = executions.width
        action = None
        if row[offset] is not None and row[offset + actions.width] is not None \
                and row[offset + actions.width + packs.width] is not None:
            action = actions.build(row, offset)
            action._state.fields_cache["pack"] = packs.build(row, offset + actions.width)
            action._state.fields_cache["runner_type"] = runtimes.build(row, offset + actions.width + packs.width)
        execution._state.fields_cache["action"] = action  # None: the action is gone (the run fails, saying so)
    announce_transition(execution)
    return execution


def execute(execution_id: int) -> str:
    close_old_connections()
    execution = claim(execution_id)
    if execution is None:
        return "skipped"
    if execution.action_id is not None and "action" not in execution._state.fields_cache:
        from apps.actions.selectors import action_with_runtime

        execution._state.fields_cache["action"] = action_with_runtime(pk=execution.action_id)
    mask_values: list[str] = []
    try:
        outcome, mask_values = _run(execution)
    except Exception as exc:  # a bug or an environment problem: the execution fails, the worker lives on
        from apps.packs.environments import EnvironmentBuildError

        if isinstance(exc, EnvironmentBuildError):
            outcome = Outcome(S.FAILED, {"error": str(exc.message), "log": exc.log})
        else:
            log.exception("execution %s crashed in its runner", execution_id)
            outcome = Outcome(S.FAILED, {"error": f"{type(exc).__name__}: {exc}"})
    result = mask(outcome.result, mask_values)
    if outcome.status == S.PENDING:
        if transition(execution, to=S.PENDING, from_=S.RUNNING, result=result):
            transaction.on_commit(lambda: services.announce_pending(execution))
        return S.PENDING
    if outcome.status == S.RUNNING:  # an orchestrating runner (workflow): its conductor ends it later
        return S.RUNNING
    services.finish(execution, outcome.status, result, pid=None)
    return outcome.status


def _run(execution: Execution) -> tuple[Outcome, list[str]]:
    action = execution.action
    if action is None:
        return Outcome(S.FAILED, {"error": f"action {execution.action_ref} no longer exists"}), []
    runtime = action.runner_type
    runner = runners.get(runtime.kind)
    if runner is None:
        return Outcome(S.FAILED, {"error": f"no runner for runner_type {runtime.name} on this worker"}), []
    parameters, mask_values = full_parameters(execution)
    pack_path = pack_directory(action.pack)
    env = base_environment(execution)
    interpreter = interpreter_and_env(runtime.kind, runtime, action.pack, pack_path, env)
    execution_id = execution.pk

    def cancel_requested() -> bool:
        return Execution.objects.filter(pk=execution_id, cancel_requested=True).exists()

    def on_long_running(pid: int) -> None:
        Execution.objects.filter(pk=execution_id).update(pid=pid)

    on_output = LiveOutput(execution_id, mask_values)

    ctx = RunContext(
        execution_id=execution_id,
        action_ref=execution.action_ref,
        pack_ref=execution.pack_ref,
        pack_path=pack_path,
        runtime_kind=runtime.kind,
        interpreter=interpreter,
        entry_point=action.entry_point,
        parameters=parameters,
        parameter_format=action.parameter_format,
        output_format=action.output_format,
        timeout=float(execution.timeout or action.timeout),
        cancel_requested=cancel_requested,
        on_output=on_output,
        on_long_running=on_long_running,
        env=env,
    )
    return runner.run(ctx), mask_values
