"""``kv`` in templates: ``kv.system.<name>``, ``kv.pack.<name>`` (the action's pack), ``kv.user.<name>``.

Secret values read through a template are decrypted for rendering and remembered in a
:class:`SecretTracker`, so whatever they flow into can be treated as secret downstream (redacted when
stored, never logged).
"""
from __future__ import annotations

from typing import Any

from django.db.models import Q
from django.utils import timezone

from apps.core.templating import TemplateError

from . import services
from .models import Key, KeyScope


class SecretTracker:
    def __init__(self) -> None:
        self.values: list[str] = []

    def add(self, value: Any) -> None:
        import json

        text = value if isinstance(value, str) else json.dumps(value)
        if text and text not in self.values:
            self.values.append(text)

    def taints(self, value: Any) -> bool:
        """Does ``value`` (rendered) contain any secret read through ``kv``?"""
        if not self.values:
            return False
        import json

        text = value if isinstance(value, str) else json.dumps(value, default=str)
        return any(secret in text for secret in self.values)


class KVScope:
    def __init__(self, scope: str, owner: str, tracker: SecretTracker) -> None:
        self._scope, self._owner, self._tracker = scope, owner, tracker

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return self[name]

    def __getitem__(self, name: str) -> Any:
        if self._scope != KeyScope.SYSTEM and not self._owner:
            raise TemplateError(f"kv.{self._scope}.{name}: no {self._scope} in this context")
        key = (
            Key.objects.filter(scope=self._scope, owner=self._owner, name=name)
            .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now()))
            .first()
        )
        if key is None:
            where = f"{self._scope}" + (f" {self._owner}" if self._owner else "")
            raise TemplateError(f"kv.{self._scope}.{name}: no datastore key {name!r} in scope {where}")
        value = services.plain_value(key)
        if key.secret:
            self._tracker.add(value)
        return value


class KV:
    """The ``kv`` template variable."""

    def __init__(self, pack: str = "", user: str = "", tracker: SecretTracker | None = None) -> None:
        self.tracker = tracker or SecretTracker()
        self.system = KVScope(KeyScope.SYSTEM, "", self.tracker)
        self.pack = KVScope(KeyScope.PACK, pack, self.tracker)
        self.user = KVScope(KeyScope.USER, user, self.tracker)
