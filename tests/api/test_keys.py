"""Datastore keys over the API (SPEC §8): redaction, encryption at rest, decrypt permission, TTL, filters."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.keys.models import Key
from tests.factories import KeyFactory

from .resources import API

pytestmark = pytest.mark.django_db

PLAINTEXT = "hunter2-very-secret"


@pytest.fixture
def secret_key(admin_api):
    response = admin_api.post(f"{API}/keys", {"name": "db_password", "scope": "system", "value": PLAINTEXT,
                                              "secret": True})
    assert response.status_code == 201, response.content
    return response.json()


def test_secret_is_redacted_in_create_detail_and_list(admin_api, secret_key):
    assert secret_key["value"] == "********"
    assert admin_api.get(f"{API}/keys/{secret_key['id']}").json()["value"] == "********"
    listed = admin_api.get(f"{API}/keys").json()["results"]
    assert [row["value"] for row in listed if row["id"] == secret_key["id"]] == ["********"]
    assert PLAINTEXT not in admin_api.get(f"{API}/keys").content.decode()


def test_secret_is_encrypted_at_rest(secret_key):
    row = Key.objects.get(pk=secret_key["id"])
    assert row.value is None
    assert row.encrypted_value
    assert PLAINTEXT not in row.encrypted_value
    assert row.key_version is not None


def test_admin_can_decrypt(admin_api, secret_key):
    detail = admin_api.get(f"{API}/keys/{secret_key['id']}?decrypt=true")
    assert detail.status_code == 200
    assert detail.json()["value"] == PLAINTEXT
    listed = admin_api.get(f"{API}/keys?decrypt=true").json()["results"]
    assert [row["value"] for row in listed if row["id"] == secret_key["id"]] == [PLAINTEXT]


@pytest.mark.parametrize("role", ["viewer_api", "operator_api", "editor_api"])
def test_decrypt_without_grant_is_403(request, secret_key, role):
    client = request.getfixturevalue(role)
    detail = client.get(f"{API}/keys/{secret_key['id']}?decrypt=true")
    assert detail.status_code == 403
    assert PLAINTEXT not in detail.content.decode()
    assert client.get(f"{API}/keys?decrypt=true").status_code == 403
    # Without asking for decryption the same caller reads the redacted value.
    assert client.get(f"{API}/keys/{secret_key['id']}").json()["value"] == "********"


def test_plain_key_value_round_trips_any_json(admin_api):
    value = {"hosts": ["a", "b"], "port": 5432, "tls": True}
    body = admin_api.post(f"{API}/keys", {"name": "db", "scope": "system", "value": value}).json()
    assert body["value"] == value
    assert Key.objects.get(pk=body["id"]).value == value


def test_making_a_plain_key_secret_encrypts_it(admin_api):
    body = admin_api.post(f"{API}/keys", {"name": "token", "scope": "system", "value": PLAINTEXT}).json()
    patched = admin_api.patch(f"{API}/keys/{body['id']}", {"secret": True})
    assert patched.status_code == 200
    assert patched.json()["value"] == "********"
    row = Key.objects.get(pk=body["id"])
    assert row.value is None and PLAINTEXT not in row.encrypted_value
    assert admin_api.get(f"{API}/keys/{body['id']}?decrypt=true").json()["value"] == PLAINTEXT


def test_renaming_a_secret_key_keeps_it_readable(admin_api, secret_key):
    """The ciphertext is bound to scope:owner:name; a rename must re-encrypt, or the secret is lost."""
    patched = admin_api.patch(f"{API}/keys/{secret_key['id']}", {"name": "db_password_v2"})
    assert patched.status_code == 200
    assert patched.json()["name"] == "db_password_v2"
    detail = admin_api.get(f"{API}/keys/{secret_key['id']}?decrypt=true")
    assert detail.status_code == 200
    assert detail.json()["value"] == PLAINTEXT


def test_ttl_sets_expires_at(admin_api):
    before = timezone.now()
    body = admin_api.post(f"{API}/keys", {"name": "lease", "scope": "system", "value": 1, "ttl_seconds": 3600}).json()
    assert "ttl_seconds" not in body
    expires = Key.objects.get(pk=body["id"]).expires_at
    assert before + timedelta(seconds=3590) <= expires <= timezone.now() + timedelta(seconds=3610)
    assert body["expires_at"] is not None


def test_ttl_must_be_positive(admin_api):
    response = admin_api.post(f"{API}/keys", {"name": "lease", "scope": "system", "value": 1, "ttl_seconds": 0})
    assert response.status_code == 400
    assert "ttl_seconds" in response.json()


def test_expired_key_is_not_listed_nor_retrievable(admin_api):
    live = KeyFactory(name="live")
    expired = KeyFactory(name="gone", expires_at=timezone.now() - timedelta(seconds=1))
    names = [row["name"] for row in admin_api.get(f"{API}/keys").json()["results"]]
    assert names == ["live"]
    assert admin_api.get(f"{API}/keys/{expired.pk}").status_code == 404
    assert admin_api.get(f"{API}/keys/{live.pk}").status_code == 200


def test_keys_filter_by_scope_owner_name_and_prefix(admin_api):
    KeyFactory(name="url", scope="system")
    KeyFactory(name="url", scope="pack", owner="netops")
    KeyFactory(name="url_backup", scope="pack", owner="core")
    KeyFactory(name="token", scope="user", owner="alice")

    def names(query):
        response = admin_api.get(f"{API}/keys?{query}")
        assert response.status_code == 200
        return sorted((row["scope"], row["owner"], row["name"]) for row in response.json()["results"])

    assert names("scope=system") == [("system", "", "url")]
    assert names("scope=pack") == [("pack", "core", "url_backup"), ("pack", "netops", "url")]
    assert names("scope=pack&owner=netops") == [("pack", "netops", "url")]
    assert names("name=url") == [("pack", "netops", "url"), ("system", "", "url")]
    assert names("prefix=url_") == [("pack", "core", "url_backup")]
    assert names("scope=user&name=token") == [("user", "alice", "token")]


def test_same_name_in_two_scopes_is_fine_but_not_twice_in_one(admin_api):
    assert admin_api.post(f"{API}/keys", {"name": "url", "scope": "system", "value": 1}).status_code == 201
    assert admin_api.post(f"{API}/keys", {"name": "url", "scope": "pack", "owner": "core", "value": 2}
                          ).status_code == 201
    duplicate = admin_api.post(f"{API}/keys", {"name": "url", "scope": "system", "value": 3})
    assert duplicate.status_code == 400
    assert Key.objects.filter(name="url").count() == 2
