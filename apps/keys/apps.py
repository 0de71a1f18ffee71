from django.apps import AppConfig


class KeysConfig(AppConfig):
    name = "apps.keys"
    label = "keys"
    verbose_name = "Datastore keys"

    def ready(self) -> None:
        from apps.core.periodic import register

        from .services import purge_expired

        register("keys.purge_expired", every=60)(purge_expired)
