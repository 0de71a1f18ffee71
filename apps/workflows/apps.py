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

        # The per-process action cache of with-items loops (apps/workflows/items.py) forgets an action this
        # process changed or deleted at once; other processes see the change within its few seconds of TTL.
        from django.db.models.signals import post_delete, post_save

        from apps.actions.models import Action

        from . import items

        post_save.connect(items.forget_actions, sender=Action, dispatch_uid="workflows.items.forget_actions")
        post_delete.connect(items.forget_actions, sender=Action, dispatch_uid="workflows.items.forget_actions_d")
