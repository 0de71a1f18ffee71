from django.apps import AppConfig


class ExecutionsConfig(AppConfig):
    name = "apps.executions"
    label = "executions"
    verbose_name = "Executions, policies and workers"

    def ready(self) -> None:
        from . import workers  # noqa: F401  registers the worker reaper with the scheduler tick
