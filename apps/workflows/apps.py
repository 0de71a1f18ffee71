from django.apps import AppConfig


class WorkflowsConfig(AppConfig):
    name = "apps.workflows"
    label = "workflows"
    verbose_name = "Workflows"

    def ready(self) -> None:
        from apps.executions import runners, services

        from . import conductor, sweep  # noqa: F401  (sweep registers its scheduler jobs)
        from .runner import WorkflowRunner

        runners.register("workflow", WorkflowRunner())

        def finished(execution) -> None:
            if execution.task_execution_id is not None:
                conductor.child_finished(execution)

        def pending(execution) -> None:
            if execution.task_execution_id is not None:
                conductor.child_pending(execution)

        services.on_finished(finished)
        services.on_pending(pending)
        services.on_cancel_requested(conductor.after_cancel)
