from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "apps.accounts"
    label = "accounts"
    verbose_name = "Identities and access"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_in, user_login_failed

        from . import audit

        user_login_failed.connect(audit.on_login_failed, dispatch_uid="accounts.audit.login_failed")
        user_logged_in.connect(audit.on_logged_in, dispatch_uid="accounts.audit.logged_in")
