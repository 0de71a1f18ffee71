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

        from django.db.models.signals import post_delete, post_save

        from .models import Policy

        post_save.connect(policies.forget_policies, sender=Policy, dispatch_uid="executions.policies.cache")
        post_delete.connect(policies.forget_policies, sender=Policy, dispatch_uid="executions.policies.cache.del")
