from django.apps import AppConfig


class InquiriesConfig(AppConfig):
    name = "apps.inquiries"
    label = "inquiries"
    verbose_name = "Inquiries"

    def ready(self) -> None:
        from apps.executions import runners
        from apps.executions import services as executions

        from . import services  # noqa: F401  (registers the inquiries.expire scheduler job)
        from .runner import InquiryRunner

        runners.register("inquiry", InquiryRunner())
        executions.on_finished(services.close_for_finished_execution)
