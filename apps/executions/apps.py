from django.apps import AppConfig


class ExecutionsConfig(AppConfig):
    name = "apps.executions"
    label = "executions"
    verbose_name = "Executions, policies and workers"

    def ready(self) -> None:
        from apps.core.health import register_check

        from . import policies, recovery, workers  # noqa: F401  register hooks and scheduler-tick jobs

        # Informational: a web process with no worker yet is still ready to accept requests.
        register_check("workers", lambda: {"ok": True, "online": workers.online_count()})
