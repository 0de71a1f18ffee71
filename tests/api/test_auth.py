"""Authentication endpoints (SPEC §10): JWT login/refresh, registration, me, change-password, API tokens."""
from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from apps.accounts.models import ApiToken, hash_token
from tests.factories import UserFactory

from .resources import API

pytestmark = pytest.mark.django_db

PASSWORD = "correct-horse-battery"  # what UserFactory sets
NEW_PASSWORD = "Tr0ub4dor&3-staple"


@pytest.fixture
def alice(db):
    return UserFactory(username="alice")


def login(client, username="alice", password=PASSWORD):
    return client.post(f"{API}/auth/login", {"username": username, "password": password})


def bearer(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def api_token_client(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


# --- JWT -----------------------------------------------------------------------------------------------------

def test_login_returns_access_and_refresh(api, alice):
    response = login(api)
    assert response.status_code == 200
    body = response.json()
    assert set(body) >= {"access", "refresh"}
    assert body["access"] != body["refresh"]


@pytest.mark.parametrize(("username", "password"), [("alice", "wrong-password"), ("nobody", PASSWORD)])
def test_login_with_wrong_credentials_is_401(api, alice, username, password):
    response = login(api, username, password)
    assert response.status_code == 401
    assert "detail" in response.json()
    assert "access" not in response.json()


def test_login_needs_both_fields(api):
    response = api.post(f"{API}/auth/login", {"username": "alice"})
    assert response.status_code == 400
    assert "password" in response.json()


def test_inactive_user_cannot_log_in(api, alice):
    alice.is_active = False
    alice.save()
    assert login(api).status_code == 401


def test_access_token_authenticates_as_bearer(api, alice):
    access = login(api).json()["access"]
    client = bearer(access)
    me = client.get(f"{API}/auth/me")
    assert me.status_code == 200
    assert me.json()["username"] == "alice"


def test_garbage_bearer_token_is_401(api):
    response = bearer("not-a-jwt").get(f"{API}/auth/me")
    assert response.status_code == 401


def test_refresh_returns_a_new_working_access_token(api, alice):
    tokens = login(api).json()
    response = api.post(f"{API}/auth/refresh", {"refresh": tokens["refresh"]})
    assert response.status_code == 200
    access = response.json()["access"]
    assert access != tokens["access"]
    assert bearer(access).get(f"{API}/auth/me").json()["username"] == "alice"


def test_refresh_with_an_access_token_or_garbage_is_401(api, alice):
    tokens = login(api).json()
    assert api.post(f"{API}/auth/refresh", {"refresh": tokens["access"]}).status_code == 401
    assert api.post(f"{API}/auth/refresh", {"refresh": "garbage"}).status_code == 401


def test_bearer_user_gets_grants_of_its_roles(api, viewer_api):
    access = login(api, viewer_api.user.username).json()["access"]
    client = bearer(access)
    assert client.get(f"{API}/packs").status_code == 200
    assert client.post(f"{API}/packs", {"ref": "netops"}).status_code == 403


# --- registration --------------------------------------------------------------------------------------------

def test_register_is_403_when_disabled(api, settings):
    settings.ATTUNE_ALLOW_REGISTRATION = False  # the default (unless the environment turns it on)
    response = api.post(f"{API}/auth/register", {"username": "newbie", "password": NEW_PASSWORD})
    assert response.status_code == 403
    assert "detail" in response.json()
    assert not UserFactory._meta.model.objects.filter(username="newbie").exists()


def test_register_when_enabled_creates_a_user_without_grants(api, settings):
    settings.ATTUNE_ALLOW_REGISTRATION = True
    response = api.post(f"{API}/auth/register", {"username": "newbie", "password": NEW_PASSWORD,
                                                 "email": "newbie@example.com"})
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["username"] == "newbie"
    assert body["permission_sets"] == []
    assert "password" not in body
    access = login(api, "newbie", NEW_PASSWORD).json()["access"]
    client = bearer(access)
    assert client.get(f"{API}/auth/me").json()["grants"] == []
    assert client.get(f"{API}/packs").status_code == 403


def test_register_rejects_taken_username_and_weak_password(api, settings, alice):
    settings.ATTUNE_ALLOW_REGISTRATION = True
    taken = api.post(f"{API}/auth/register", {"username": "ALICE", "password": NEW_PASSWORD})
    assert taken.status_code == 400
    assert "username" in taken.json()
    weak = api.post(f"{API}/auth/register", {"username": "bob", "password": "12345678"})
    assert weak.status_code == 400
    assert "password" in weak.json()


# --- me ------------------------------------------------------------------------------------------------------

def test_me_shows_username_sets_and_grants(operator_api):
    body = operator_api.get(f"{API}/auth/me").json()
    assert body["username"] == "operator-user"
    assert body["is_superuser"] is False
    assert body["permission_sets"] == [{"name": "operator", "packs": None}]
    grants = {(g["resource"], a) for g in body["grants"] for a in g["actions"]}
    assert ("actions", "execute") in grants
    assert ("packs", "view") in grants
    assert ("packs", "create") not in grants


def test_me_for_superuser_has_wildcard_grant(admin_api):
    body = admin_api.get(f"{API}/auth/me").json()
    assert body["username"] == "root"
    assert body["is_superuser"] is True
    assert body["grants"] == [{"resource": "*", "actions": ["*"], "packs": None}]


def test_me_patch_updates_profile_but_not_username_or_superuser(viewer_api):
    response = viewer_api.patch(f"{API}/auth/me", {"first_name": "Vera", "username": "hacker",
                                                   "is_superuser": True})
    assert response.status_code == 200
    viewer_api.user.refresh_from_db()
    assert viewer_api.user.first_name == "Vera"
    assert viewer_api.user.username == "viewer-user"
    assert viewer_api.user.is_superuser is False


# --- change-password -----------------------------------------------------------------------------------------

def test_change_password_with_wrong_old_password_is_400(api, alice):
    client = bearer(login(api).json()["access"])
    response = client.post(f"{API}/auth/change-password", {"old_password": "nope", "new_password": NEW_PASSWORD})
    assert response.status_code == 400
    assert "old_password" in response.json()
    assert login(api).status_code == 200


def test_change_password_rejects_a_weak_new_password(api, alice):
    client = bearer(login(api).json()["access"])
    response = client.post(f"{API}/auth/change-password", {"old_password": PASSWORD, "new_password": "123"})
    assert response.status_code == 400
    assert "new_password" in response.json()


def test_change_password_then_log_in_with_the_new_one(api, alice):
    client = bearer(login(api).json()["access"])
    response = client.post(f"{API}/auth/change-password", {"old_password": PASSWORD, "new_password": NEW_PASSWORD})
    assert response.status_code == 204
    assert login(api, password=PASSWORD).status_code == 401
    assert login(api, password=NEW_PASSWORD).status_code == 200


# --- API tokens ----------------------------------------------------------------------------------------------

def test_token_is_shown_once_and_stored_hashed(viewer_api):
    created = viewer_api.post(f"{API}/auth/tokens", {"name": "ci"})
    assert created.status_code == 201, created.content
    body = created.json()
    raw = body["token"]
    assert raw.startswith(body["prefix"])
    assert body["user"] == "viewer-user"
    assert body["is_active"] is True

    row = ApiToken.objects.get(pk=body["id"])
    assert row.key_hash == hash_token(raw)
    assert raw not in row.key_hash

    for url in (f"{API}/auth/tokens", f"{API}/auth/tokens/{body['id']}"):
        text = viewer_api.get(url).content.decode()
        assert raw not in text
        assert row.key_hash not in text
    listed = viewer_api.get(f"{API}/auth/tokens").json()["results"]
    assert [t["prefix"] for t in listed] == [body["prefix"]]
    assert "token" not in listed[0] and "key_hash" not in listed[0]


def test_token_authenticates_and_records_use(viewer_api):
    body = viewer_api.post(f"{API}/auth/tokens", {"name": "ci"}).json()
    client = api_token_client(body["token"])
    me = client.get(f"{API}/auth/me")
    assert me.status_code == 200
    assert me.json()["username"] == "viewer-user"
    assert client.get(f"{API}/packs").status_code == 200
    assert client.post(f"{API}/packs", {"ref": "netops"}).status_code == 403  # the owner's grants, no more
    assert ApiToken.objects.get(pk=body["id"]).last_used_at is not None


def test_wrong_token_is_401(api):
    response = api_token_client("att_not-a-real-token").get(f"{API}/packs")
    assert response.status_code == 401
    assert "detail" in response.json()


def test_deleting_a_token_revokes_it(viewer_api):
    body = viewer_api.post(f"{API}/auth/tokens", {"name": "ci"}).json()
    client = api_token_client(body["token"])
    assert client.get(f"{API}/packs").status_code == 200
    assert viewer_api.delete(f"{API}/auth/tokens/{body['id']}").status_code == 204
    assert client.get(f"{API}/packs").status_code == 401
    record = viewer_api.get(f"{API}/auth/tokens/{body['id']}").json()
    assert record["revoked_at"] is not None and record["is_active"] is False


def test_users_see_only_their_own_tokens(viewer_api, editor_api, admin_api):
    mine = viewer_api.post(f"{API}/auth/tokens", {"name": "mine"}).json()
    theirs = editor_api.post(f"{API}/auth/tokens", {"name": "theirs"}).json()
    assert [t["id"] for t in viewer_api.get(f"{API}/auth/tokens").json()["results"]] == [mine["id"]]
    assert viewer_api.get(f"{API}/auth/tokens/{theirs['id']}").status_code == 404
    assert viewer_api.delete(f"{API}/auth/tokens/{theirs['id']}").status_code == 404
    assert ApiToken.objects.get(pk=theirs["id"]).revoked_at is None
    every = {t["id"] for t in admin_api.get(f"{API}/auth/tokens").json()["results"]}
    assert {mine["id"], theirs["id"]} <= every
    only_editor = admin_api.get(f"{API}/auth/tokens?user=editor-user").json()["results"]
    assert [t["id"] for t in only_editor] == [theirs["id"]]


def test_non_admin_cannot_issue_a_token_for_someone_else(viewer_api, editor_api):
    response = viewer_api.post(f"{API}/auth/tokens", {"name": "steal", "user": editor_api.user.username})
    assert response.status_code == 403
    assert not ApiToken.objects.filter(name="steal").exists()


def test_admin_can_issue_a_token_for_a_service_account(admin_api):
    bot = UserFactory(username="ci-bot", is_service_account=True)
    response = admin_api.post(f"{API}/auth/tokens", {"name": "pipeline", "user": "ci-bot"})
    assert response.status_code == 201
    assert response.json()["user"] == "ci-bot"
    me = api_token_client(response.json()["token"]).get(f"{API}/auth/me").json()
    assert me["username"] == bot.username and me["is_service_account"] is True


def test_tokens_cannot_be_edited(viewer_api):
    body = viewer_api.post(f"{API}/auth/tokens", {"name": "ci"}).json()
    assert viewer_api.patch(f"{API}/auth/tokens/{body['id']}", {"name": "x"}).status_code == 405
    assert viewer_api.put(f"{API}/auth/tokens/{body['id']}", {"name": "x"}).status_code == 405


def test_token_of_an_inactive_user_is_401(viewer_api):
    body = viewer_api.post(f"{API}/auth/tokens", {"name": "ci"}).json()
    viewer_api.user.is_active = False
    viewer_api.user.save()
    assert api_token_client(body["token"]).get(f"{API}/auth/me").status_code == 401
