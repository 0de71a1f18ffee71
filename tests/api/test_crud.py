"""Create / retrieve / update / delete for the configuration resources, table-driven, plus per-resource details."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from django.contrib.auth import get_user_model

from apps.accounts.models import PermissionAssignment, PermissionSet
from apps.actions.models import Action
from apps.executions.models import Policy
from apps.keys.models import Key
from apps.packs.models import Pack, Runtime
from apps.rules.models import Rule
from apps.triggers.models import Sensor, Trigger
from tests.factories import ActionFactory, PackFactory, RuleFactory, TriggerFactory, UserFactory

from .resources import API

pytestmark = pytest.mark.django_db


def _prerequisites():
    """What the component payloads below refer to: pack core, action core.echo, trigger core.webhook, user bob."""
    core = PackFactory(ref="core")
    ActionFactory(pack=core, name="echo", runner_type=Runtime.objects.get(name="noop"), entry_point="")
    TriggerFactory(pack=core, name="webhook")
    UserFactory(username="bob")


@dataclass
class Case:
    name: str
    model: type
    create: dict
    lookup: str | None  # None: addressed by the id returned on create
    expect: dict  # fields the create response must echo (beyond the payload)
    patch: dict
    put: dict = field(default_factory=dict)  # merged into `create` for a full update
    hidden: tuple[str, ...] = ()  # payload fields that must not be echoed

    def __str__(self) -> str:
        return self.name


CASES = [
    Case("packs", Pack,
         {"ref": "netops", "label": "Network ops", "description": "Routers", "version": "1.2.3",
          "author": "Ops", "dependencies": ["core"]},
         "netops", {"source": "api"}, {"label": "Network operations"}, {"version": "2.0.0"}),
    Case("runtimes", Runtime,
         {"name": "ruby", "kind": "shell", "interpreter": "/usr/bin/ruby", "queue": "actions.ruby"},
         "ruby", {"in_process": False, "enabled": True}, {"description": "Ruby scripts"}, {"enabled": False}),
    Case("actions", Action,
         {"pack": "core", "name": "restart_service", "runner_type": "shell", "entry_point": "restart.sh",
          "timeout": 60, "parameters": {"unit": {"type": "string", "required": True},
                                        "token": {"type": "string", "secret": True}}},
         "core.restart_service", {"ref": "core.restart_service", "source": "api"},
         {"description": "Restart a unit"}, {"timeout": 120}),
    Case("triggers", Trigger,
         {"pack": "core", "name": "new_ticket", "description": "A ticket",
          "payload_schema": {"type": "object", "properties": {"id": {"type": "integer"}}}},
         "core.new_ticket", {"ref": "core.new_ticket", "system": False, "webhook_enabled": False},
         {"description": "A new ticket"}, {"enabled": False}),
    Case("sensors", Sensor,
         {"pack": "core", "name": "inbox_watch", "runner_type": "python", "entry_point": "watch.py",
          "trigger_types": ["core.webhook"], "mode": "poll", "poll_interval": 30},
         "core.inbox_watch", {"ref": "core.inbox_watch", "state": "stopped", "restarts": 0},
         {"poll_interval": 60}, {"mode": "daemon", "poll_interval": None}),
    Case("rules", Rule,
         {"pack": "core", "name": "page_on_critical", "trigger": "core.webhook", "action": "core.echo",
          "criteria": {"payload.severity": {"type": "equals", "pattern": "critical"}},
          "action_params": {"message": "{{ payload.host }}"}},
         "core.page_on_critical", {"ref": "core.page_on_critical", "owner": "root", "enabled": True},
         {"enabled": False}, {"condition": "{{ payload.count > 3 }}"}),
    Case("policies", Policy,
         {"pack": "core", "name": "one_at_a_time", "action": "core.echo", "type": "concurrency", "threshold": 1,
          "attributes": ["message"], "on_limit": "delay"},
         "core.one_at_a_time", {"ref": "core.one_at_a_time", "enabled": True},
         {"threshold": 3}, {"on_limit": "cancel"}),
    Case("keys", Key,
         {"name": "api_url", "scope": "system", "value": {"url": "https://example.com", "retries": 3}},
         None, {"owner": "", "secret": False, "created_by": "root"},
         {"value": [1, 2, 3]}, {"value": "plain string"}),
    Case("permission-sets", PermissionSet,
         {"name": "deployers", "description": "Deploy things",
          "grants": [{"resource": "actions", "actions": ["view", "execute"], "packs": ["core"]}]},
         "deployers", {"builtin": False},
         {"description": "Deploy everything"},
         {"grants": [{"resource": "executions", "actions": ["view"]}]}),
    Case("permission-assignments", PermissionAssignment,
         {"identity": "bob", "permission_set": "viewer"},
         None, {"packs": None}, {"packs": ["core"]}, {"permission_set": "operator"}),
    Case("identities", get_user_model(),
         {"username": "carol", "email": "carol@example.com", "password": "Tr0ub4dor&3-staple"},
         "carol", {"is_superuser": False, "is_active": True, "permission_sets": []},
         {"first_name": "Carol"}, {"email": "carol@ops.example.com"}, hidden=("password",)),
]
CASE_IDS = [c.name for c in CASES]


def _detail(case: Case, created: dict) -> str:
    lookup = case.lookup if case.lookup is not None else created["id"]
    return f"{API}/{case.name}/{lookup}"


def _echoes(body: dict, expected: dict, hidden=()) -> None:
    for key, value in expected.items():
        if key in hidden:
            continue
        assert body[key] == value, (key, body[key], value)
    for key in hidden:
        assert key not in body


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_create_retrieve_update_delete(admin_api, case):
    _prerequisites()
    created = admin_api.post(f"{API}/{case.name}/", case.create)
    assert created.status_code == 201, created.content
    body = created.json()
    _echoes(body, case.create, case.hidden)
    _echoes(body, case.expect)
    assert case.model.objects.filter(pk=body["id"]).exists()

    detail = _detail(case, body)
    for url in (detail, detail + "/"):
        got = admin_api.get(url)
        assert got.status_code == 200, (url, got.content)
        assert got.json() == body

    patched = admin_api.patch(detail, case.patch)
    assert patched.status_code == 200, patched.content
    _echoes(patched.json(), case.patch)
    _echoes(admin_api.get(detail).json(), case.patch)

    full = {**case.create, **case.patch, **case.put}
    put = admin_api.put(detail + "/", full)
    assert put.status_code == 200, put.content
    _echoes(put.json(), {**case.patch, **case.put})
    _echoes(admin_api.get(detail).json(), case.put)

    deleted = admin_api.delete(detail)
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert admin_api.get(detail).status_code == 404
    assert not case.model.objects.filter(pk=body["id"]).exists()


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_created_object_appears_in_list(admin_api, case):
    _prerequisites()
    body = admin_api.post(f"{API}/{case.name}", case.create).json()  # no trailing slash on create either
    listed = admin_api.get(f"{API}/{case.name}?page_size=1000").json()["results"]
    assert body["id"] in [row["id"] for row in listed]


# --- pack components -----------------------------------------------------------------------------------------

def test_component_ref_is_pack_dot_name_and_retrievable_by_ref(admin_api):
    PackFactory(ref="core")
    body = admin_api.post(f"{API}/actions", {"pack": "core", "name": "echo", "runner_type": "shell",
                                             "entry_point": "echo.sh"}).json()
    assert body["ref"] == "core.echo"
    assert body["pack"] == "core"
    for url in (f"{API}/actions/core.echo", f"{API}/actions/core.echo/"):
        response = admin_api.get(url)
        assert response.status_code == 200
        assert response.json()["name"] == "echo"


def test_renaming_a_component_changes_its_ref(admin_api):
    ActionFactory(pack=PackFactory(ref="core"), name="echo")
    response = admin_api.patch(f"{API}/actions/core.echo", {"name": "say"})
    assert response.status_code == 200
    assert response.json()["ref"] == "core.say"
    assert admin_api.get(f"{API}/actions/core.say").status_code == 200
    assert admin_api.get(f"{API}/actions/core.echo").status_code == 404


def test_rule_owner_is_the_creator_and_cannot_be_set(editor_api):
    _prerequisites()
    response = editor_api.post(f"{API}/rules", {
        "pack": "core", "name": "r1", "trigger": "core.webhook", "action": "core.echo", "owner": "bob"})
    assert response.status_code == 201, response.content
    assert response.json()["owner"] == "editor-user"
    assert Rule.objects.get(ref="core.r1").owner == editor_api.user


def test_runtime_reports_in_process(admin_api):
    body = admin_api.get(f"{API}/runtimes/noop").json()
    assert body["in_process"] is True
    assert admin_api.get(f"{API}/runtimes/shell").json()["in_process"] is False


def test_deleting_an_action_used_by_a_rule_is_a_conflict(admin_api):
    rule = RuleFactory()
    response = admin_api.delete(f"{API}/actions/{rule.action.ref}")
    assert response.status_code == 409
    assert "detail" in response.json()
    assert Action.objects.filter(pk=rule.action.pk).exists()


def test_deleting_a_pack_removes_its_components(admin_api):
    """A pack is removed with everything in it (like `st2 pack remove`), rules included."""
    rule = RuleFactory(pack=PackFactory(ref="netops"))
    response = admin_api.delete(f"{API}/packs/netops")
    assert response.status_code == 204, response.content
    assert not Pack.objects.filter(ref="netops").exists()
    assert not Rule.objects.filter(pk=rule.pk).exists()
    assert not Action.objects.filter(pk=rule.action_id).exists()
    assert not Trigger.objects.filter(pk=rule.trigger_id).exists()


def test_pack_ref_and_runtime_name_cannot_change(admin_api):
    """Component refs are `<pack>.<name>` and actions name their runtime: renames would orphan them."""
    ActionFactory(pack=PackFactory(ref="core"), name="echo")
    response = admin_api.patch(f"{API}/packs/core", {"ref": "base"})
    assert response.status_code == 400
    assert "ref" in response.json()
    assert admin_api.get(f"{API}/actions/core.echo").json()["pack"] == "core"
    assert admin_api.get(f"{API}/packs/base").status_code == 404
    renamed = admin_api.patch(f"{API}/runtimes/shell", {"name": "bash"})
    assert renamed.status_code == 400
    assert "name" in renamed.json()
    assert admin_api.get(f"{API}/runtimes/shell").status_code == 200


# --- identities ----------------------------------------------------------------------------------------------

def test_created_identity_can_log_in_and_password_is_never_returned(admin_api, api):
    body = admin_api.post(f"{API}/identities", {"username": "carol", "password": "Tr0ub4dor&3-staple"}).json()
    assert "password" not in body
    listed = admin_api.get(f"{API}/identities").json()["results"]
    assert all("password" not in row for row in listed)
    login = api.post(f"{API}/auth/login", {"username": "carol", "password": "Tr0ub4dor&3-staple"})
    assert login.status_code == 200
    assert {"access", "refresh"} <= set(login.json())


def test_identity_lists_its_permission_sets(admin_api, viewer_api):
    body = admin_api.get(f"{API}/identities/{viewer_api.user.username}").json()
    assert body["permission_sets"] == ["viewer"]


def test_identity_needs_a_password_unless_service_account(admin_api):
    response = admin_api.post(f"{API}/identities", {"username": "dave"})
    assert response.status_code == 400
    assert "password" in response.json()
    service = admin_api.post(f"{API}/identities", {"username": "ci-bot", "is_service_account": True})
    assert service.status_code == 201
    assert service.json()["is_service_account"] is True


def test_identity_weak_password_is_rejected(admin_api):
    response = admin_api.post(f"{API}/identities", {"username": "erin", "password": "123"})
    assert response.status_code == 400
    assert "password" in response.json()


def test_identity_cannot_make_itself_superuser(admin_api):
    UserFactory(username="mallory")
    response = admin_api.patch(f"{API}/identities/mallory", {"is_superuser": True})
    assert response.status_code == 200
    assert response.json()["is_superuser"] is False


def test_admin_cannot_delete_own_identity(admin_api, admin_user):
    response = admin_api.delete(f"{API}/identities/{admin_user.username}")
    assert response.status_code == 409
    assert admin_user.__class__.objects.filter(pk=admin_user.pk).exists()


def test_permission_assignment_grants_the_set(admin_api):
    UserFactory(username="bob")
    created = admin_api.post(f"{API}/permission-assignments", {"identity": "bob", "permission_set": "viewer"})
    assert created.status_code == 201
    assert admin_api.get(f"{API}/identities/bob").json()["permission_sets"] == ["viewer"]
    duplicate = admin_api.post(f"{API}/permission-assignments", {"identity": "bob", "permission_set": "viewer"})
    assert duplicate.status_code == 400
    assert "permission_set" in duplicate.content.decode()
    assert PermissionAssignment.objects.filter(identity__username="bob").count() == 1


def test_lookups_with_dots_work_for_identities_and_permission_sets(admin_api):
    assert admin_api.post(f"{API}/identities", {"username": "john.doe", "password": "Tr0ub4dor&3-staple"}
                          ).status_code == 201
    assert admin_api.post(f"{API}/permission-sets", {"name": "ops.leads", "grants": []}).status_code == 201
    assert admin_api.get(f"{API}/identities/john.doe").json()["username"] == "john.doe"
    assert admin_api.get(f"{API}/permission-sets/ops.leads/").json()["name"] == "ops.leads"
    assert admin_api.delete(f"{API}/permission-sets/ops.leads").status_code == 204
