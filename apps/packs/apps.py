from django.apps import AppConfig


class PacksConfig(AppConfig):
    name = "apps.packs"
    label = "packs"
    verbose_name = "Packs and runtimes"
