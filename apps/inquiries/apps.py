from django.apps import AppConfig


class InquiriesConfig(AppConfig):
    name = "apps.inquiries"
    label = "inquiries"
    verbose_name = "Inquiries"
