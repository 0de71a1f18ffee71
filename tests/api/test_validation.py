"""Invalid input is a 400 naming the failing field, and nothing is written."""
from __future__ import annotations

import pytest
from django.apps import apps as django_apps

from apps.packs.models import Runtime
from tests.factories import ActionFactory, PackFactory, TriggerFactory

from .resources import API

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(db):
    core = PackFactory(ref="core")
    ActionFactory(pack=core, name="echo", runner_type=Runtime.objects.get(name="noop"), entry_point="")
    TriggerFactory(pack=core, name="webhook")


SENSOR = {"pack": "core", "name": "watch", "runner_type": "python", "entry_point": "w.py",
          "trigger_types": ["core.webhook"]}
RULE = {"pack": "core", "name": "r", "trigger": "core.webhook", "action": "core.echo"}
ACTION = {"pack": "core", "name": "a", "runner_type": "shell", "entry_point": "a.sh"}
POLICY = {"pack": "core", "name": "p", "action": "core.echo"}

# (resource, model label, body, field that must be named)
INVALID = [
    ("packs", "packs.Pack", {"ref": "Bad Ref"}, "ref"),
    ("packs", "packs.Pack", {"ref": "9lives"}, "ref"),
    ("packs", "packs.Pack", {"ref": "good", "version": "1.0"}, "version"),
    ("packs", "packs.Pack", {"ref": "good", "version": "v1.0.0"}, "version"),
    ("packs", "packs.Pack", {"ref": "good", "dependencies": "core"}, "dependencies"),
    ("packs", "packs.Pack", {"ref": "good", "config_schema": {"type": "strang"}}, "config_schema"),
    ("runtimes", "packs.Runtime", {"name": "ruby", "kind": "perl"}, "kind"),
    ("actions", "actions.Action", {**ACTION, "runner_type": "cobol"}, "runner_type"),
    ("actions", "actions.Action", {**ACTION, "parameters": {"x": {"type": "strang"}}}, "parameters"),
    ("actions", "actions.Action", {**ACTION, "parameters": {"x": {"type": "string", "required": "yes"}}},
     "parameters"),
    ("actions", "actions.Action", {**ACTION, "parameters": {"x": {"type": "integer", "minimum": "one"}}},
     "parameters"),
    ("actions", "actions.Action", {**ACTION, "entry_point": ""}, "entry_point"),
    ("actions", "actions.Action", {**ACTION, "timeout": 0}, "timeout"),
    ("actions", "actions.Action", {**ACTION, "name": "Bad Name"}, "name"),
    ("actions", "actions.Action", {**ACTION, "name": "echo"}, "name"),  # core.echo exists
    ("actions", "actions.Action", {**ACTION, "pack": "nosuchpack"}, "pack"),
    ("actions", "actions.Action", {**ACTION, "runner_type": "workflow", "entry_point": "wf.yaml"}, "entry_point"),
    ("triggers", "triggers.Trigger", {"pack": "core", "name": "t", "payload_schema": {"type": "strang"}},
     "payload_schema"),
    ("triggers", "triggers.Trigger", {"pack": "core", "name": "t", "payload_schema": "not a schema"},
     "payload_schema"),
    ("triggers", "triggers.Trigger", {"pack": "core", "name": "webhook"}, "name"),  # core.webhook exists
    ("sensors", "triggers.Sensor", {**SENSOR, "mode": "poll"}, "poll_interval"),
    ("sensors", "triggers.Sensor", {**SENSOR, "trigger_types": ["core.nosuch"]}, "trigger_types"),
    ("rules", "rules.Rule", {**RULE, "criteria": {"payload.x": {"type": "bogus", "pattern": 1}}}, "criteria"),
    ("rules", "rules.Rule", {**RULE, "criteria": {"payload.x": {"type": "equals"}}}, "criteria"),
    ("rules", "rules.Rule", {**RULE, "trigger": "core.nosuch"}, "trigger"),
    ("rules", "rules.Rule", {**RULE, "action": "core.nosuch"}, "action"),
    ("rules", "rules.Rule", {**RULE, "action_params": ["not", "a", "mapping"]}, "action_params"),
    ("policies", "executions.Policy", {**POLICY, "type": "concurrency"}, "threshold"),
    ("policies", "executions.Policy", {**POLICY, "type": "rate_limit", "limit": 5}, "window_seconds"),
    ("policies", "executions.Policy", {**POLICY, "type": "retry"}, "max_retries"),
    ("policies", "executions.Policy", {**POLICY, "type": "retry", "max_retries": 2, "on": ["crash"]}, "on"),
    ("policies", "executions.Policy", {**POLICY, "type": "throttle", "threshold": 1}, "type"),
    ("keys", "keys.Key", {"name": "k", "scope": "system", "owner": "core", "value": 1}, "owner"),
    ("keys", "keys.Key", {"name": "k", "scope": "pack", "value": 1}, "owner"),
    ("keys", "keys.Key", {"name": "k", "scope": "galaxy", "value": 1}, "scope"),
    ("keys", "keys.Key", {"name": "k", "scope": "system"}, "value"),
    ("permission-sets", "accounts.PermissionSet",
     {"name": "s", "grants": [{"resource": "packs", "actions": ["fly"]}]}, "grants"),
    ("permission-sets", "accounts.PermissionSet",
     {"name": "s", "grants": [{"resource": "spaceships", "actions": ["view"]}]}, "grants"),
    ("permission-sets", "accounts.PermissionSet", {"name": "s", "grants": {"resource": "packs"}}, "grants"),
    ("permission-sets", "accounts.PermissionSet", {"name": "viewer", "grants": []}, "name"),
    ("permission-assignments", "accounts.PermissionAssignment",
     {"identity": "nobody", "permission_set": "viewer"}, "identity"),
    ("permission-assignments", "accounts.PermissionAssignment",
     {"identity": "root", "permission_set": "nosuchset"}, "permission_set"),
]


@pytest.mark.parametrize(("resource", "model", "body", "field"), INVALID,
                         ids=[f"{r}-{f}-{i}" for i, (r, _m, _b, f) in enumerate(INVALID)])
def test_invalid_body_is_400_naming_the_field(admin_api, world, resource, model, body, field):
    model_class = django_apps.get_model(model)
    before = model_class.objects.count()
    response = admin_api.post(f"{API}/{resource}", body)
    assert response.status_code == 400, response.content
    errors = response.json()
    assert field in errors, errors
    assert isinstance(errors[field], list) and errors[field]
    assert model_class.objects.count() == before


def test_bad_ref_message_explains_the_rule(admin_api):
    errors = admin_api.post(f"{API}/packs", {"ref": "Bad Ref"}).json()
    assert "lowercase" in " ".join(errors["ref"])


def test_invalid_parameter_type_message_names_the_parameter(admin_api, world):
    errors = admin_api.post(f"{API}/actions", {**ACTION, "parameters": {"x": {"type": "strang"}}}).json()
    assert "parameters.x.type" in " ".join(errors["parameters"])


def test_invalid_operator_message_names_the_key(admin_api, world):
    errors = admin_api.post(f"{API}/rules", {**RULE, "criteria": {"payload.sev": {"type": "bogus", "pattern": 1}}}
                            ).json()
    assert "payload.sev" in " ".join(errors["criteria"])


def test_valid_operator_aliases_are_accepted(admin_api, world):
    criteria = {"payload.a": {"type": "eq", "pattern": 1}, "payload.b": {"type": "nexists"},
                "payload.c": {"type": "search", "condition": "any",
                              "pattern": {"item.name": {"type": "startswith", "pattern": "db"}}}}
    response = admin_api.post(f"{API}/rules", {**RULE, "criteria": criteria})
    assert response.status_code == 201, response.content
    assert response.json()["criteria"] == criteria


def test_invalid_patch_is_400_and_leaves_the_row(admin_api, world):
    response = admin_api.patch(f"{API}/packs/core", {"version": "latest"})
    assert response.status_code == 400
    assert "version" in response.json()
    assert admin_api.get(f"{API}/packs/core").json()["version"] == "1.0.0"


def test_patch_to_an_existing_name_is_400(admin_api, world):
    ActionFactory(pack=PackFactory(ref="core"), name="other")
    response = admin_api.patch(f"{API}/actions/core.other", {"name": "echo"})
    assert response.status_code == 400
    assert "name" in response.json()


def test_malformed_json_is_400(admin_api):
    response = admin_api.generic("POST", f"{API}/packs", "{not json", content_type="application/json")
    assert response.status_code == 400
    assert "detail" in response.json()
