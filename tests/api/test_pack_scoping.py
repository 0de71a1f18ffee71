"""Grants limited to packs: lists are narrowed in the query, objects outside the packs are forbidden,
and decrypt covers only the keys of the granted packs."""
from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from apps.accounts.models import PermissionAssignment, PermissionSet
from apps.keys import services
from apps.keys.models import Key
from tests.factories import ActionFactory, ExecutionFactory, PackFactory, UserFactory

pytestmark = pytest.mark.django_db


def client_with(grants, packs=None):
    user = UserFactory()
    pset = PermissionSet.objects.create(name=f"custom-{user.username}", grants=grants)
    PermissionAssignment.objects.create(identity=user, permission_set=pset, packs=packs)
    client = APIClient()
    client.force_authenticate(user)
    return client


def secret(scope, owner, name, value):
    key = Key(scope=scope, owner=owner, name=name)
    services.apply_value(key, value, secret=True)
    key.save()
    return key


@pytest.fixture
def two_packs():
    ops, web = PackFactory(ref="ops"), PackFactory(ref="web")
    ActionFactory(pack=ops, name="restart")
    ActionFactory(pack=web, name="deploy")
    ExecutionFactory(action=ops.actions.get())
    ExecutionFactory(action=web.actions.get())
    return ops, web


def test_pack_limited_viewer_lists_only_its_packs(two_packs):
    client = client_with([{"resource": "*", "actions": ["view"]}], packs=["ops"])
    assert [a["ref"] for a in client.get("/api/v1/actions").json()["results"]] == ["ops.restart"]
    assert [p["ref"] for p in client.get("/api/v1/packs").json()["results"]] == ["ops"]
    assert [e["pack"] for e in client.get("/api/v1/executions").json()["results"]] == ["ops"]
    assert client.get("/api/v1/actions/web.deploy").status_code == 404  # invisible, not merely forbidden
    assert client.get("/api/v1/actions/ops.restart").status_code == 200
    assert client.get("/api/v1/runtimes").json()["count"] == 7  # global resource
    assert client.get("/api/v1/identities").json()["count"] == 0


def test_pack_limited_editor_cannot_create_in_another_pack(two_packs):
    client = client_with([{"resource": "actions", "actions": ["view", "create", "update"]}], packs=["ops"])
    body = {"name": "new", "runner_type": "noop"}
    assert client.post("/api/v1/actions", {**body, "pack": "web"}, format="json").status_code == 403
    assert client.post("/api/v1/actions", {**body, "pack": "ops"}, format="json").status_code == 201


def test_pack_limited_key_grant_sees_and_decrypts_only_its_pack(db):
    system_key = secret("system", "", "root_password", "sys-secret")
    secret("pack", "ops", "token", "ops-secret")
    secret("pack", "web", "token", "web-secret")
    secret("action", "ops.restart", "token", "action-secret")
    client = client_with([{"resource": "keys", "actions": ["view", "decrypt"], "packs": ["ops"]}])
    listed = client.get("/api/v1/keys?decrypt=true").json()["results"]
    assert {(k["owner"], k["value"]) for k in listed} == {("ops", "ops-secret"), ("ops.restart", "action-secret")}
    assert client.get(f"/api/v1/keys/{system_key.pk}").status_code == 404


def test_decrypt_limited_to_a_pack_redacts_other_visible_keys(db):
    secret("system", "", "root_password", "sys-secret")
    secret("pack", "ops", "token", "ops-secret")
    secret("pack", "web", "token", "web-secret")
    client = client_with([{"resource": "keys", "actions": ["view"]},
                          {"resource": "keys", "actions": ["decrypt"], "packs": ["ops"]}])
    listed = client.get("/api/v1/keys?decrypt=true").json()["results"]
    values = {(k["scope"], k["owner"], k["name"]): k["value"] for k in listed}
    assert values[("pack", "ops", "token")] == "ops-secret"
    assert values[("pack", "web", "token")] == "********"
    assert values[("system", "", "root_password")] == "********"
    system_key = Key.objects.get(name="root_password")
    assert client.get(f"/api/v1/keys/{system_key.pk}?decrypt=true").status_code == 403
    assert "sys-secret" not in client.get(f"/api/v1/keys/{system_key.pk}").content.decode()
