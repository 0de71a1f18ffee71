"""Datastore keys (SPEC §8): any JSON value, scoped, optionally secret (encrypted at rest)."""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from apps.core.models import TimestampedModel


class KeyScope(models.TextChoices):
    SYSTEM = "system"
    PACK = "pack"
    ACTION = "action"
    USER = "user"


class Key(TimestampedModel):
    name = models.CharField(max_length=256)
    scope = models.CharField(max_length=8, choices=KeyScope.choices, default=KeyScope.SYSTEM)
    owner = models.CharField(
        max_length=256, blank=True, default="",
        help_text="Pack ref, action ref or username for pack/action/user scopes; empty for system.",
    )
    value = models.JSONField(null=True, blank=True, help_text="Plain value (null for secrets).")
    secret = models.BooleanField(default=False)
    encrypted_value = models.TextField(blank=True, default="", help_text="AES-256-GCM ciphertext (secrets).")
    key_version = models.PositiveIntegerField(null=True, blank=True, help_text="Key-ring version that encrypted it.")
    expires_at = models.DateTimeField(null=True, blank=True, db_index=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["scope", "owner", "name"]
        constraints = [models.UniqueConstraint(fields=["scope", "owner", "name"], name="uniq_key_scope_owner_name")]
        indexes = [models.Index(fields=["scope", "owner"])]

    def __str__(self) -> str:
        return f"{self.scope}:{self.owner + ':' if self.owner else ''}{self.name}"

    @property
    def expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()

    def pack_ref_for_permissions(self) -> str | None:
        if self.scope == KeyScope.PACK:
            return self.owner
        if self.scope == KeyScope.ACTION and "." in self.owner:
            return self.owner.split(".", 1)[0]
        return None
