"""Identities (users and service accounts), permission sets, assignments and API tokens."""
from __future__ import annotations

import hashlib
import secrets

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from apps.core.models import TimestampedModel

# Resources a grant can name, and the actions on them. "*" stands for all of either.
RESOURCES = (
    "packs", "runtimes", "actions", "triggers", "sensors", "rules", "policies", "keys", "events",
    "enforcements", "executions", "workflows", "inquiries", "workers", "identities", "permission_sets",
    "permission_assignments", "artifacts", "webhooks", "audit",
)
ACTIONS = ("view", "create", "update", "delete", "execute", "cancel", "respond", "decrypt", "register")


class User(AbstractUser):
    """A person or a service account (which logs in with API tokens only)."""

    is_service_account = models.BooleanField(
        default=False, help_text="Service accounts authenticate with API tokens, not passwords."
    )
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["username"]


def validate_grants(value) -> None:
    if not isinstance(value, list):
        raise ValidationError("grants must be a list of {resource, actions, packs} objects")
    for i, grant in enumerate(value):
        where = f"grants[{i}]"
        if not isinstance(grant, dict):
            raise ValidationError(f"{where} must be an object")
        unknown = set(grant) - {"resource", "actions", "packs"}
        if unknown:
            raise ValidationError(f"{where} has unknown keys: {', '.join(sorted(unknown))}")
        resource = grant.get("resource")
        if resource != "*" and resource not in RESOURCES:
            raise ValidationError(f"{where}.resource {resource!r} is not one of: *, {', '.join(RESOURCES)}")
        actions = grant.get("actions")
        if not isinstance(actions, list) or not actions:
            raise ValidationError(f"{where}.actions must be a non-empty list")
        for action in actions:
            if action != "*" and action not in ACTIONS:
                raise ValidationError(f"{where}.actions: {action!r} is not one of: *, {', '.join(ACTIONS)}")
        packs = grant.get("packs")
        if packs is not None and (not isinstance(packs, list) or not all(isinstance(p, str) for p in packs)):
            raise ValidationError(f"{where}.packs must be a list of pack refs or null")


class PermissionSet(TimestampedModel):
    name = models.CharField(max_length=64, unique=True)
    description = models.TextField(blank=True, default="")
    grants = models.JSONField(default=list, validators=[validate_grants])
    builtin = models.BooleanField(default=False, editable=False)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class PermissionAssignment(TimestampedModel):
    identity = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="assignments")
    permission_set = models.ForeignKey(PermissionSet, on_delete=models.CASCADE, related_name="assignments")
    packs = models.JSONField(
        null=True, blank=True, help_text="Limit this assignment to these pack refs (null: all packs)."
    )

    class Meta:
        ordering = ["identity__username", "permission_set__name"]
        constraints = [
            models.UniqueConstraint(fields=["identity", "permission_set"], name="uniq_assignment_identity_set")
        ]

    def __str__(self) -> str:
        return f"{self.identity} → {self.permission_set}"


TOKEN_PREFIX = "att_"


def hash_token(raw: str) -> str:
    # API tokens carry 256 bits of randomness, so a fast hash is enough (as GitHub and Django REST Knox do).
    return hashlib.sha256(raw.encode()).hexdigest()


class ApiToken(TimestampedModel):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=128)
    prefix = models.CharField(max_length=16, db_index=True, help_text="First characters, to recognise a token.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        now = timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    @classmethod
    def issue(cls, user, name: str, expires_at=None) -> tuple[ApiToken, str]:
        """Create a token; the raw value is returned once and never stored."""
        raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token = cls.objects.create(
            user=user, name=name, prefix=raw[:12], key_hash=hash_token(raw), expires_at=expires_at
        )
        return token, raw


class AuditEvent(models.Model):
    """Who did what to which object, when and from where. Append-only; never holds secret values."""

    created = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="audit_events"
    )
    actor_name = models.CharField(
        max_length=150, blank=True, default="",
        help_text="Username at the time (kept when the identity is deleted; the attempted name for failed logins).",
    )
    action = models.CharField(max_length=64, db_index=True, help_text='e.g. "login", "key.decrypt", "inquiry.respond"')
    object_type = models.CharField(max_length=64, blank=True, default="")
    object_ref = models.CharField(max_length=256, blank=True, default="", help_text="Ref, name or id of the object.")
    pack_ref = models.CharField(max_length=128, blank=True, default="")
    details = models.JSONField(default=dict, blank=True)
    remote_addr = models.GenericIPAddressField(null=True, blank=True)

    class Meta:
        ordering = ["-created", "-id"]
        # Written on every execution started through the API: plain indexes only (no LIKE pattern-ops index
        # but on `action`, which the action_prefix filter reads), none under a composite that leads with it.
        indexes = [models.Index(fields=["object_type", "object_ref"]),
                   models.Index(fields=["actor_name"], name="audit_actor_name"),
                   models.Index(fields=["pack_ref"], name="audit_pack_ref")]

    def __str__(self) -> str:
        target = f" {self.object_type} {self.object_ref}".rstrip() if self.object_type else ""
        return f"{self.actor_name or 'anonymous'} {self.action}{target}"
