from django.apps import AppConfig


class RulesConfig(AppConfig):
    name = "apps.rules"
    label = "rules"
    verbose_name = "Rules and enforcements"

    def ready(self) -> None:
        from apps.executions.services import on_finished

        from . import (
            recovery,  # noqa: F401  registers the event re-dispatch job
            sensors,  # noqa: F401  registers rules.sensors (starts the sensor supervisor in the scheduler)
            timers,  # noqa: F401  registers rules.fire_timers and keeps next_fire_at true on save
        )
        from .system_triggers import execution_completed

        on_finished(execution_completed)

        from django.db.models.signals import post_delete, post_save

        from .models import Rule
        from .system_triggers import forget

        post_save.connect(forget, sender=Rule, dispatch_uid="rules.execution_completed.cache")
        post_delete.connect(forget, sender=Rule, dispatch_uid="rules.execution_completed.cache.delete")

        # Cached rule indexes (engine.rules_for), JWT users, execute-endpoint actions and webhooks are
        # revalidated after any change to what they hold (apps.core.generation).
        from django.contrib.auth import get_user_model

        from apps.actions.models import Action
        from apps.packs.models import Pack, Runtime
        from apps.triggers.models import Trigger, Webhook

        from .engine import rules_changed

        for model in (Rule, Action, Pack, Runtime, Trigger, Webhook, get_user_model()):
            label = model._meta.label_lower
            post_save.connect(rules_changed, sender=model, dispatch_uid=f"rules.index.{label}.save")
            post_delete.connect(rules_changed, sender=model, dispatch_uid=f"rules.index.{label}.delete")
