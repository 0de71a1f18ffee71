"""Basic role checks with the built-in permission sets (SPEC §10). Full RBAC is covered elsewhere."""
from __future__ import annotations

import pytest

from apps.accounts.models import PermissionSet
from apps.packs.models import Pack
from tests.factories import ActionFactory, PackFactory, UserFactory

from .resources import API, RESOURCE_IDS, RESOURCES

pytestmark = pytest.mark.django_db

PACK = {"ref": "netops", "version": "1.0.0"}
READABLE_BY_ROLES = [r for r in RESOURCES
                     if r.name not in {"identities", "permission-sets", "permission-assignments", "auth/tokens"}]


@pytest.mark.parametrize("resource", READABLE_BY_ROLES, ids=[r.name for r in READABLE_BY_ROLES])
@pytest.mark.parametrize("role", ["viewer_api", "operator_api", "editor_api"])
def test_every_role_can_read(request, role, resource):
    client = request.getfixturevalue(role)
    (lookup,) = resource.build(1)
    assert client.get(resource.list_url).status_code == 200
    assert client.get(resource.detail_url(lookup)).status_code == 200


def test_viewer_can_list_packs_but_not_create(viewer_api):
    PackFactory(ref="core")
    assert [p["ref"] for p in viewer_api.get(f"{API}/packs").json()["results"]] == ["core"]
    response = viewer_api.post(f"{API}/packs", PACK)
    assert response.status_code == 403
    assert "detail" in response.json()
    assert not Pack.objects.filter(ref="netops").exists()


@pytest.mark.parametrize("role", ["viewer_api", "operator_api"])
def test_viewer_and_operator_cannot_change_configuration(request, role):
    client = request.getfixturevalue(role)
    action = ActionFactory(pack=PackFactory(ref="core"), name="echo")
    assert client.post(f"{API}/packs", PACK).status_code == 403
    assert client.patch(f"{API}/packs/core", {"label": "x"}).status_code == 403
    assert client.delete(f"{API}/packs/core").status_code == 403
    assert client.post(f"{API}/actions", {"pack": "core", "name": "x", "runner_type": "noop"}).status_code == 403
    assert client.patch(f"{API}/actions/core.echo", {"description": "x"}).status_code == 403
    assert client.delete(f"{API}/actions/core.echo").status_code == 403
    assert client.post(f"{API}/keys", {"name": "k", "scope": "system", "value": 1}).status_code == 403
    action.refresh_from_db()
    assert action.description == ""
    assert Pack.objects.get(ref="core").label == "Core"


def test_editor_can_create_packs_and_actions(editor_api):
    assert editor_api.post(f"{API}/packs", PACK).status_code == 201
    response = editor_api.post(f"{API}/actions", {"pack": "netops", "name": "ping", "runner_type": "shell",
                                                  "entry_point": "ping.sh"})
    assert response.status_code == 201, response.content
    assert response.json()["ref"] == "netops.ping"
    assert editor_api.patch(f"{API}/actions/netops.ping", {"timeout": 30}).json()["timeout"] == 30
    assert editor_api.post(f"{API}/keys", {"name": "k", "scope": "system", "value": 1}).status_code == 201
    assert editor_api.delete(f"{API}/actions/netops.ping").status_code == 204


def test_editor_cannot_manage_runtimes(editor_api):
    response = editor_api.post(f"{API}/runtimes", {"name": "ruby", "kind": "shell"})
    assert response.status_code == 403


@pytest.mark.parametrize("resource", ["identities", "permission-sets", "permission-assignments"])
@pytest.mark.parametrize("role", ["viewer_api", "operator_api", "editor_api"])
def test_non_superusers_cannot_see_identities_or_grants(request, role, resource):
    client = request.getfixturevalue(role)
    response = client.get(f"{API}/{resource}")
    assert response.status_code == 403
    assert "detail" in response.json()


def test_non_superuser_cannot_create_identities(editor_api):
    response = editor_api.post(f"{API}/identities", {"username": "eve", "password": "Tr0ub4dor&3-staple"})
    assert response.status_code == 403
    assert not UserFactory._meta.model.objects.filter(username="eve").exists()


def test_non_superuser_cannot_grant_itself_admin(editor_api):
    response = editor_api.post(f"{API}/permission-assignments",
                               {"identity": editor_api.user.username, "permission_set": "admin"})
    assert response.status_code == 403
    assert not editor_api.user.assignments.filter(permission_set__name="admin").exists()


@pytest.mark.parametrize("name", ["admin", "editor", "operator", "viewer"])
def test_builtin_permission_sets_are_immutable(admin_api, name):
    before = PermissionSet.objects.get(name=name)
    patched = admin_api.patch(f"{API}/permission-sets/{name}", {"description": "changed"})
    assert patched.status_code == 409
    assert "detail" in patched.json()
    put = admin_api.put(f"{API}/permission-sets/{name}", {"name": name, "grants": []})
    assert put.status_code == 409
    deleted = admin_api.delete(f"{API}/permission-sets/{name}")
    assert deleted.status_code == 409
    after = PermissionSet.objects.get(name=name)
    assert (after.description, after.grants) == (before.description, before.grants)
    assert admin_api.get(f"{API}/permission-sets/{name}").json()["builtin"] is True


def test_builtin_flag_cannot_be_set_through_the_api(admin_api):
    created = admin_api.post(f"{API}/permission-sets", {"name": "mine", "builtin": True,
                                                        "grants": [{"resource": "packs", "actions": ["view"]}]})
    assert created.status_code == 201
    assert created.json()["builtin"] is False
    assert admin_api.delete(f"{API}/permission-sets/mine").status_code == 204


def test_custom_permission_set_grants_what_it_says(admin_api, api):
    admin_api.post(f"{API}/permission-sets", {"name": "pack-readers",
                                              "grants": [{"resource": "packs", "actions": ["view"]}]})
    admin_api.post(f"{API}/identities", {"username": "reader", "password": "Tr0ub4dor&3-staple"})
    admin_api.post(f"{API}/permission-assignments", {"identity": "reader", "permission_set": "pack-readers"})
    access = api.post(f"{API}/auth/login", {"username": "reader", "password": "Tr0ub4dor&3-staple"}).json()["access"]
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {access}")
    assert api.get(f"{API}/packs").status_code == 200
    assert api.get(f"{API}/actions").status_code == 403
    assert api.post(f"{API}/packs", PACK).status_code == 403


@pytest.mark.parametrize("resource", RESOURCES, ids=RESOURCE_IDS)
def test_identity_without_grants_is_refused_everywhere_but_its_tokens(api, resource):
    UserFactory(username="nobody")
    api.force_authenticate(UserFactory._meta.model.objects.get(username="nobody"))
    expected = 200 if resource.name == "auth/tokens" else 403
    assert api.get(resource.list_url).status_code == expected
