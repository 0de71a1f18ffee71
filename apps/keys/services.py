"""Writes and reads of datastore keys; secrets are encrypted before they reach a row."""
from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from .crypto import get_ring
from .models import Key

REDACTED = "********"


def associated_data(key: Key) -> str:
    return f"{key.scope}:{key.owner}:{key.name}"


def apply_value(key: Key, value: Any, secret: bool) -> None:
    """Set the value on an unsaved/changed key, encrypting it when secret."""
    key.secret = secret
    if secret:
        key.encrypted_value, key.key_version = get_ring().encrypt(value, associated_data(key))
        key.value = None
    else:
        key.value = value
        key.encrypted_value = ""
        key.key_version = None


def apply_ttl(key: Key, ttl_seconds: int | None) -> None:
    key.expires_at = timezone.now() + timedelta(seconds=ttl_seconds) if ttl_seconds else None


def plain_value(key: Key) -> Any:
    """The real value (decrypting a secret). Callers decide whether the caller may see it."""
    if key.secret:
        return get_ring().decrypt(key.encrypted_value, associated_data(key))
    return key.value


def redacted_value(key: Key) -> Any:
    return REDACTED if key.secret else key.value


@transaction.atomic
def reencrypt_all(batch_size: int = 500) -> int:
    """Re-encrypt every secret under the current key-ring version. Returns how many changed."""
    ring = get_ring()
    changed = 0
    stale = Key.objects.filter(secret=True).exclude(key_version=ring.current_version).select_for_update()
    for key in stale.iterator(chunk_size=batch_size):
        value = ring.decrypt(key.encrypted_value, associated_data(key))
        key.encrypted_value, key.key_version = ring.encrypt(value, associated_data(key))
        key.save(update_fields=["encrypted_value", "key_version", "updated"])
        changed += 1
    return changed


def purge_expired() -> int:
    deleted, _ = Key.objects.filter(expires_at__lte=timezone.now()).delete()
    return deleted
