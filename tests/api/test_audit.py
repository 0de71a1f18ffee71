"""The audit log: what is recorded (logins, grants, identities, tokens, decrypted secrets, executions started
through the API), that it never holds secret values, GET /api/v1/audit (admins, or an audit:view grant) and
its read-only admin page."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from apps.accounts.audit import record
from apps.accounts.models import AuditEvent, PermissionAssignment, PermissionSet
from apps.keys import services as key_services
from apps.keys.models import Key
from apps.packs.models import Runtime
from tests.factories import ActionFactory, PackFactory, UserFactory

from .resources import API

pytestmark = pytest.mark.django_db

PASSWORD = "correct-horse-battery"
NEW_PASSWORD = "Tr0ub4dor&3-staple"


def events(**filters) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(**filters).order_by("id"))


def secret_key(scope: str, owner: str, name: str, value: str) -> Key:
    key = Key(scope=scope, owner=owner, name=name)
    key_services.apply_value(key, value, secret=True)
    key.save()
    return key


def all_audit_text() -> str:
    return json.dumps(list(AuditEvent.objects.values("actor_name", "object_ref", "details")), default=str)


def client_with(grants, packs=None) -> APIClient:
    user = UserFactory()
    pset = PermissionSet.objects.create(name=f"custom-{user.username}", grants=grants)
    PermissionAssignment.objects.create(identity=user, permission_set=pset, packs=packs)
    client = APIClient()
    client.force_authenticate(user)
    return client


# --- logins --------------------------------------------------------------------------------------------------

def test_logins_and_failed_logins_are_recorded(api):
    alice = UserFactory(username="alice")
    assert api.post(f"{API}/auth/login", {"username": "alice", "password": PASSWORD}).status_code == 200
    assert api.post(f"{API}/auth/login", {"username": "alice", "password": "guess-1"}).status_code == 401
    assert api.post(f"{API}/auth/login", {"username": "mallory", "password": "guess-2"}).status_code == 401
    (ok,) = events(action="login")
    assert (ok.actor, ok.actor_name, ok.object_type, ok.object_ref) == (alice, "alice", "identity", "alice")
    assert ok.details == {"via": "jwt"} and ok.remote_addr == "127.0.0.1"
    failed = events(action="login_failed")
    assert [(e.actor, e.actor_name, e.details["via"]) for e in failed] == [(None, "alice", "jwt"),
                                                                          (None, "mallory", "jwt")]
    assert "guess-1" not in all_audit_text() and "guess-2" not in all_audit_text()


def test_throttled_logins_are_recorded(api, settings):
    UserFactory(username="alice")
    limit = int(settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]["login"].split("/")[0])
    for _ in range(limit + 1):
        api.post(f"{API}/auth/login", {"username": "alice", "password": "wrong"})
    (throttled,) = events(action="login_throttled")
    assert throttled.actor_name == "alice" and throttled.actor is None
    assert len(events(action="login_failed")) == limit


def test_admin_logins_are_recorded():
    UserFactory(username="boss", is_staff=True, is_superuser=True)
    client = Client()
    client.post("/admin/login/?next=/admin/", {"username": "boss", "password": "nope"})
    client.post("/admin/login/?next=/admin/", {"username": "boss", "password": PASSWORD})
    assert [(e.action, e.actor_name, e.details["via"]) for e in events(action__startswith="login")] == [
        ("login_failed", "boss", "session"), ("login", "boss", "session")]


# --- grants, identities, tokens ------------------------------------------------------------------------------

def test_permission_set_and_assignment_changes_through_the_api(admin_api):
    grants = [{"resource": "packs", "actions": ["view"]}]
    UserFactory(username="bob")
    assert admin_api.post(f"{API}/permission-sets", {"name": "readers", "grants": grants}, format="json").status_code == 201
    assert admin_api.patch(f"{API}/permission-sets/readers", {"description": "Read packs"},
                           format="json").status_code == 200
    created = admin_api.post(f"{API}/permission-assignments", {"identity": "bob", "permission_set": "readers",
                                                               "packs": ["core"]}, format="json").json()
    assert admin_api.patch(f"{API}/permission-assignments/{created['id']}", {"packs": None},
                           format="json").status_code == 200
    assert admin_api.delete(f"{API}/permission-assignments/{created['id']}").status_code == 204
    assert admin_api.delete(f"{API}/permission-sets/readers").status_code == 204
    assert [(e.action, e.object_ref, e.actor_name) for e in events(object_type__startswith="permission")] == [
        ("permission_set.create", "readers", "root"),
        ("permission_set.update", "readers", "root"),
        ("permission_assignment.create", str(created["id"]), "root"),
        ("permission_assignment.update", str(created["id"]), "root"),
        ("permission_assignment.delete", str(created["id"]), "root"),
        ("permission_set.delete", "readers", "root"),
    ]
    assert events(action="permission_set.create")[0].details == {"grants": grants}
    assert events(action="permission_set.update")[0].details == {"grants": grants, "fields": ["description"]}
    assert events(action="permission_assignment.create")[0].details == {
        "identity": "bob", "permission_set": "readers", "packs": ["core"]}
    assert events(action="permission_assignment.delete")[0].details == {
        "identity": "bob", "permission_set": "readers", "packs": None}


def test_refused_changes_are_not_recorded(editor_api, admin_api):
    assert editor_api.post(f"{API}/permission-assignments", {"identity": "editor-user", "permission_set": "admin"},
                           format="json").status_code == 403
    assert admin_api.patch(f"{API}/permission-sets/viewer", {"description": "x"}, format="json").status_code == 409
    assert not events(object_type__startswith="permission")


def test_identities_are_recorded_without_passwords(admin_api):
    created = admin_api.post(f"{API}/identities", {"username": "carol", "password": NEW_PASSWORD}, format="json")
    assert created.status_code == 201
    assert admin_api.patch(f"{API}/identities/carol", {"password": "An0ther-long-pass", "is_active": False},
                           format="json").status_code == 200
    assert admin_api.delete(f"{API}/identities/carol").status_code == 204
    assert [(e.action, e.object_ref) for e in events(object_type="identity")] == [
        ("identity.create", "carol"), ("identity.update", "carol"), ("identity.delete", "carol")]
    assert events(action="identity.update")[0].details["fields"] == ["is_active", "password (changed)"]
    text = all_audit_text()
    assert NEW_PASSWORD not in text and "An0ther-long-pass" not in text


def test_api_tokens_issued_and_revoked_are_recorded_without_the_token(viewer_api):
    body = viewer_api.post(f"{API}/auth/tokens", {"name": "ci"}).json()
    assert viewer_api.delete(f"{API}/auth/tokens/{body['id']}").status_code == 204
    assert viewer_api.delete(f"{API}/auth/tokens/{body['id']}").status_code == 204  # revoked once
    issued, revoked = events(object_type="api_token")
    assert (issued.action, issued.object_ref, issued.details["prefix"]) == ("api_token.create", str(body["id"]),
                                                                           body["prefix"])
    assert revoked.action == "api_token.revoke" and revoked.details["owner"] == "viewer-user"
    assert len(events(action="api_token.revoke")) == 1
    assert body["token"] not in all_audit_text()


def test_permission_changes_in_the_admin_are_recorded(admin_client):
    bob = UserFactory(username="bob")
    response = admin_client.post("/admin/accounts/permissionset/add/", {
        "name": "deployers", "description": "", "grants": json.dumps([{"resource": "actions", "actions": ["view"]}])})
    assert response.status_code == 302, response.content[:2000]
    pset = PermissionSet.objects.get(name="deployers")
    response = admin_client.post("/admin/accounts/permissionassignment/add/", {
        "identity": bob.pk, "permission_set": pset.pk, "packs": "null"})
    assert response.status_code == 302, response.content[:2000]
    assignment = PermissionAssignment.objects.get(identity=bob)
    response = admin_client.post(f"/admin/accounts/permissionassignment/{assignment.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    response = admin_client.post(f"/admin/accounts/permissionset/{pset.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert [(e.action, e.details["via"]) for e in events(object_type__startswith="permission")] == [
        ("permission_set.create", "admin"), ("permission_assignment.create", "admin"),
        ("permission_assignment.delete", "admin"), ("permission_set.delete", "admin")]
    assert events(action="permission_assignment.create")[0].details["identity"] == "bob"


# --- secrets and executions ----------------------------------------------------------------------------------

def test_reading_keys_in_clear_is_recorded_per_secret_key(admin_api):
    token = secret_key("pack", "web", "token", "s3cr3t-token")
    secret_key("system", "", "root_password", "s3cr3t-root")
    Key.objects.create(name="plain", scope="system", value={"a": 1})
    assert admin_api.get(f"{API}/keys").status_code == 200
    assert admin_api.get(f"{API}/keys/{token.pk}").status_code == 200
    assert not events(action="key.decrypt")  # redacted reads are not decryptions
    assert admin_api.get(f"{API}/keys/{token.pk}?decrypt=true").json()["value"] == "s3cr3t-token"
    (one,) = events(action="key.decrypt")
    assert (one.object_type, one.object_ref, one.pack_ref, one.actor_name) == ("key", "pack:web:token", "web", "root")
    assert one.details == {"via": "retrieve"}
    assert admin_api.get(f"{API}/keys?decrypt=true").status_code == 200
    listed = events(action="key.decrypt")[1:]
    assert sorted(e.object_ref for e in listed) == ["pack:web:token", "system:root_password"]
    assert {e.details["via"] for e in listed} == {"list"}
    text = all_audit_text()
    assert "s3cr3t-token" not in text and "s3cr3t-root" not in text


def test_a_refused_decrypt_is_not_a_decrypt(viewer_api):
    key = secret_key("system", "", "root_password", "s3cr3t-root")
    assert viewer_api.get(f"{API}/keys/{key.pk}?decrypt=true").status_code == 403
    assert not events(action="key.decrypt")


def test_pack_config_decrypt_is_recorded(admin_api):
    PackFactory(ref="web")
    assert admin_api.get(f"{API}/packs/web/config?decrypt=true").status_code == 200
    (event,) = events(action="pack_config.decrypt")
    assert (event.object_type, event.object_ref, event.pack_ref) == ("pack", "web", "web")


@pytest.mark.parametrize("how", ["execute", "create"])
def test_executions_started_through_the_api_are_recorded(operator_api, how):
    ActionFactory(pack=PackFactory(ref="web"), name="deploy", runner_type=Runtime.objects.get(name="noop"),
                  entry_point="", parameters={"token": {"type": "string", "secret": True}})
    if how == "execute":
        response = operator_api.post(f"{API}/actions/web.deploy/execute", {"parameters": {"token": "tok-1"}},
                                     format="json")
    else:
        response = operator_api.post(f"{API}/executions", {"action": "web.deploy", "parameters": {"token": "tok-1"}},
                                     format="json")
    assert response.status_code == 201, response.content
    (event,) = events(action="execution.create")
    assert (event.actor_name, event.object_type, event.object_ref, event.pack_ref) == (
        "operator-user", "execution", str(response.json()["id"]), "web")
    assert event.details == {"action_ref": "web.deploy"}
    assert "tok-1" not in all_audit_text()


def test_details_that_look_secret_are_redacted(admin_user):
    event = record(admin_user, "test.event", password="p", nested={"api_key": "k", "hmac_secret": "h", "ok": 1},
                   items=[{"token": "t"}])
    assert event.details == {"password": "********", "nested": {"api_key": "********", "hmac_secret": "********",
                                                                 "ok": 1}, "items": [{"token": "********"}]}


# --- GET /api/v1/audit ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("role", ["viewer_api", "operator_api", "editor_api"])
def test_only_admins_read_the_audit_log(request, role):
    client = request.getfixturevalue(role)
    assert client.get(f"{API}/audit").status_code == 403
    assert APIClient().get(f"{API}/audit").status_code == 401


def test_the_audit_log_lists_filters_orders_and_pages(admin_api):
    old = record(None, "login_failed", actor_name="mallory", object_type="identity", object_ref="mallory")
    AuditEvent.objects.filter(pk=old.pk).update(created=timezone.now() - timedelta(days=2))
    record(UserFactory(username="alice"), "login", object_type="identity", object_ref="alice")
    record(None, "key.decrypt", actor_name="alice", object_type="key", object_ref="system:x")
    body = admin_api.get(f"{API}/audit").json()
    assert body["count"] == 3
    assert [e["action"] for e in body["results"]] == ["key.decrypt", "login", "login_failed"]  # newest first
    first = body["results"][1]
    assert set(first) == {"id", "created", "actor", "actor_id", "action", "object_type", "object_ref", "pack_ref",
                          "details", "remote_addr"}
    assert first["actor"] == "alice" and first["actor_id"] is not None

    def actions(query):
        return [e["action"] for e in admin_api.get(f"{API}/audit?{query}").json()["results"]]

    assert actions("actor=alice") == ["key.decrypt", "login"]
    assert actions("action=login") == ["login"]
    assert actions("action_prefix=login") == ["login", "login_failed"]
    assert actions("object_type=key") == ["key.decrypt"]
    since = (timezone.now() - timedelta(days=1)).isoformat()
    assert admin_api.get(f"{API}/audit", {"since": since}).json()["count"] == 2
    assert [e["action"] for e in admin_api.get(f"{API}/audit", {"until": since}).json()["results"]] == ["login_failed"]
    assert actions("ordering=created") == ["login_failed", "login", "key.decrypt"]
    page = admin_api.get(f"{API}/audit?page_size=2").json()
    assert len(page["results"]) == 2 and page["next"] is not None
    assert admin_api.get(f"{API}/audit/{old.pk}").json()["actor"] == "mallory"


def test_the_audit_log_is_read_only(admin_api):
    event = record(None, "login_failed", actor_name="mallory")
    assert admin_api.post(f"{API}/audit", {"action": "login"}, format="json").status_code == 405
    assert admin_api.patch(f"{API}/audit/{event.pk}", {"action": "x"}, format="json").status_code == 405
    assert admin_api.delete(f"{API}/audit/{event.pk}").status_code == 405
    assert AuditEvent.objects.get(pk=event.pk).action == "login_failed"


def test_an_audit_view_grant_reads_it_and_a_pack_limited_one_sees_its_packs(db):
    record(None, "login_failed", actor_name="mallory")
    record(None, "key.decrypt", actor_name="x", object_type="key", object_ref="pack:web:t", pack_ref="web")
    record(None, "key.decrypt", actor_name="x", object_type="key", object_ref="pack:ops:t", pack_ref="ops")
    auditor = client_with([{"resource": "audit", "actions": ["view"]}])
    assert auditor.get(f"{API}/audit").json()["count"] == 3
    web_auditor = client_with([{"resource": "audit", "actions": ["view"]}], packs=["web"])
    assert [e["object_ref"] for e in web_auditor.get(f"{API}/audit").json()["results"]] == ["pack:web:t"]


def test_the_audit_admin_page_is_read_only(admin_client):
    event = record(None, "login_failed", actor_name="mallory", object_type="identity", object_ref="mallory")
    listing = admin_client.get("/admin/accounts/auditevent/")
    assert listing.status_code == 200 and "mallory" in listing.content.decode()
    page = admin_client.get(f"/admin/accounts/auditevent/{event.pk}/change/")
    assert page.status_code == 200 and 'name="_save"' not in page.content.decode()
    assert admin_client.get("/admin/accounts/auditevent/add/").status_code == 403
    assert admin_client.post(f"/admin/accounts/auditevent/{event.pk}/change/", {}).status_code == 403
    assert admin_client.post(f"/admin/accounts/auditevent/{event.pk}/delete/", {"post": "yes"}).status_code == 403
    assert AuditEvent.objects.filter(pk=event.pk).exists()
