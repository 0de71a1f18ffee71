from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    name = "apps.notifications"
    label = "notifications"
    verbose_name = "Notifications"

    def ready(self) -> None:
        from django.db.models.signals import post_save

        from apps.core.statemachine import on_transition
        from apps.executions import services as executions
        from apps.executions.executor import LiveOutput
        from apps.executions.models import Execution
        from apps.inquiries.models import Inquiry
        from apps.workflows.models import TaskExecution

        from . import receivers, services

        on_transition(Execution, services.execution_transitioned)
        if services.output_chunk not in LiveOutput.listeners:
            LiveOutput.listeners.append(services.output_chunk)
        post_save.connect(receivers.inquiry_saved, sender=Inquiry, dispatch_uid="notifications.inquiry_saved")
        post_save.connect(receivers.task_saved, sender=TaskExecution, dispatch_uid="notifications.task_saved")
        executions.on_finished(receivers.execution_finished)  # after the inquiries app's (INSTALLED_APPS order)
