"""API token expiry and login throttling (SPEC §10): the parts of authentication test_auth.py does not cover."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone
from rest_framework.test import APIClient

from apps.accounts.models import ApiToken
from tests.factories import UserFactory

from .resources import API

pytestmark = pytest.mark.django_db

PASSWORD = "correct-horse-battery"
LIMIT = int(settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]["login"].split("/")[0])


def token_client(raw: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
    return client


def test_a_token_works_until_it_expires(viewer_api):
    soon = timezone.now() + timedelta(hours=1)
    body = viewer_api.post(f"{API}/auth/tokens", {"name": "ci", "expires_at": soon.isoformat()}, format="json").json()
    client = token_client(body["token"])
    assert client.get(f"{API}/auth/me").status_code == 200
    ApiToken.objects.filter(pk=body["id"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    expired = client.get(f"{API}/auth/me")
    assert expired.status_code == 401
    assert "expired" in expired.json()["detail"]
    record = viewer_api.get(f"{API}/auth/tokens/{body['id']}").json()
    assert record["is_active"] is False and record["revoked_at"] is None


def test_a_token_cannot_be_issued_already_expired(viewer_api):
    past = timezone.now() - timedelta(minutes=1)
    response = viewer_api.post(f"{API}/auth/tokens", {"name": "ci", "expires_at": past.isoformat()}, format="json")
    assert response.status_code == 400
    assert "expires_at" in response.json()
    assert not ApiToken.objects.filter(name="ci").exists()


def test_last_used_is_recorded_at_most_once_a_minute(viewer_api):
    body = viewer_api.post(f"{API}/auth/tokens", {"name": "ci"}).json()
    client = token_client(body["token"])
    assert ApiToken.objects.get(pk=body["id"]).last_used_at is None
    client.get(f"{API}/auth/me")
    first = ApiToken.objects.get(pk=body["id"]).last_used_at
    assert first is not None
    client.get(f"{API}/auth/me")
    assert ApiToken.objects.get(pk=body["id"]).last_used_at == first
    ApiToken.objects.filter(pk=body["id"]).update(last_used_at=first - timedelta(minutes=2))
    client.get(f"{API}/auth/me")
    assert ApiToken.objects.get(pk=body["id"]).last_used_at > first


def test_login_is_throttled_per_client_address(api):
    UserFactory(username="alice")
    for _ in range(LIMIT):
        assert api.post(f"{API}/auth/login", {"username": "alice", "password": "wrong"}).status_code == 401
    throttled = api.post(f"{API}/auth/login", {"username": "alice", "password": PASSWORD})
    assert throttled.status_code == 429  # even the right password, until the window passes
    assert "Retry-After" in throttled.headers
    other = APIClient(REMOTE_ADDR="192.0.2.7")  # another client is not affected
    assert other.post(f"{API}/auth/login", {"username": "alice", "password": PASSWORD}).status_code == 200


def test_a_made_up_forwarded_for_header_does_not_reset_the_throttle(api):
    UserFactory(username="alice")
    for attempt in range(LIMIT):
        response = api.post(f"{API}/auth/login", {"username": "alice", "password": "wrong"},
                            HTTP_X_FORWARDED_FOR=f"198.51.100.{attempt}")
        assert response.status_code == 401
    again = api.post(f"{API}/auth/login", {"username": "alice", "password": "wrong"},
                     HTTP_X_FORWARDED_FOR="203.0.113.99")
    assert again.status_code == 429


def test_registration_shares_the_login_throttle(api, settings):
    settings.ATTUNE_ALLOW_REGISTRATION = True
    for _ in range(LIMIT):
        api.post(f"{API}/auth/login", {"username": "nobody", "password": "wrong"})
    response = api.post(f"{API}/auth/register", {"username": "newbie", "password": "Tr0ub4dor&3-staple"})
    assert response.status_code == 429
