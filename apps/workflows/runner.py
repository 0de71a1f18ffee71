"""The ``workflow`` runner: a worker that claims a workflow execution hands it to the conductor."""
from __future__ import annotations

from apps.core.statuses import ExecutionStatus
from apps.executions.runners import Outcome, RunContext

from . import conductor


class WorkflowRunner:
    def run(self, ctx: RunContext) -> Outcome:
        try:
            conductor.start(ctx.execution_id)
        except conductor.WorkflowError as exc:
            return Outcome(ExecutionStatus.FAILED, {"output": None, "errors": [{"task": None, "message": str(exc)}]})
        # The conductor ends the execution when its tasks are done; the executor leaves it running.
        return Outcome(ExecutionStatus.RUNNING)
