"""Secrets at rest: AES-256-GCM under a versioned key ring, rotation re-encrypts."""
from __future__ import annotations

import base64

import pytest
from django.core.management import call_command

from apps.keys import crypto, services
from apps.keys.models import Key


@pytest.fixture
def key_file(tmp_path, settings):
    settings.ATTUNE_ENCRYPTION_KEYS = ""
    settings.ATTUNE_ENCRYPTION_KEY_FILE = tmp_path / "encryption_keys"
    return settings.ATTUNE_ENCRYPTION_KEY_FILE


def test_round_trip_and_binding_to_associated_data(key_file):
    ring = crypto.get_ring()
    token, version = ring.encrypt({"password": "hunter2"}, "system::db")
    assert version == 1 and token.startswith("v1:")
    assert "hunter2" not in token
    assert ring.decrypt(token, "system::db") == {"password": "hunter2"}
    with pytest.raises(crypto.KeyRingError, match="failed authentication"):
        ring.decrypt(token, "system::other")
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"


def test_ring_from_environment_and_bad_specs(settings):
    key = base64.b64encode(b"k" * 32).decode()
    settings.ATTUNE_ENCRYPTION_KEYS = f"3:{key}"
    assert crypto.get_ring().current_version == 3
    with pytest.raises(crypto.KeyRingError, match="must be 32 bytes"):
        crypto.parse_ring("1:" + base64.b64encode(b"short").decode())
    with pytest.raises(crypto.KeyRingError, match="bad key-ring entry"):
        crypto.parse_ring("one:abc")


@pytest.mark.django_db
def test_rotation_reencrypts_every_secret(key_file, capsys):
    key = Key(name="db_password", scope="system")
    services.apply_value(key, "s3cret", secret=True)
    key.save()
    plain = Key.objects.create(name="region", scope="system", value="eu-west-1")
    row = Key.objects.get(pk=key.pk)
    assert row.value is None and "s3cret" not in row.encrypted_value and row.key_version == 1

    call_command("attune", "keys", "rotate")
    assert "added key version 2" in capsys.readouterr().out
    row = Key.objects.get(pk=key.pk)
    assert row.key_version == 2 and row.encrypted_value.startswith("v2:")
    assert services.plain_value(row) == "s3cret"
    assert Key.objects.get(pk=plain.pk).value == "eu-west-1"


@pytest.mark.django_db
def test_expired_keys_are_purged(key_file):
    key = Key(name="temp", scope="system", value=1)
    services.apply_ttl(key, 1)
    key.save()
    Key.objects.filter(pk=key.pk).update(expires_at=key.expires_at.replace(year=2000))
    assert services.purge_expired() == 1
    assert not Key.objects.filter(pk=key.pk).exists()
