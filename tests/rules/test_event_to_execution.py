"""Events in, rules match, actions run: webhooks (HMAC, CIDR, size, rate), enforcements, trace, chaining."""
from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from apps.executions.models import Execution
from apps.packs.registrar import register_pack, shipped_pack_dirs
from apps.rules import engine
from apps.rules.models import Enforcement, Rule
from apps.triggers.models import Event
from tests.executions.conftest import wait_for

pytestmark = [pytest.mark.timeout(120), pytest.mark.django_db(transaction=True)]


@pytest.fixture
def core(worker):
    from apps.accounts.services import sync_builtin_sets
    from apps.packs.runtimes import sync_builtin_runtimes

    sync_builtin_runtimes()
    sync_builtin_sets()
    for path in shipped_pack_dirs():
        register_pack(path)


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def make_rule(admin_api, **overrides):
    body = {"pack": "core", "name": "echo_on_hook", "trigger": "core.webhook", "action": "core.echo",
            "criteria": {"payload.severity": {"type": "equals", "pattern": "critical"}},
            "action_params": {"message": "{{ payload.host }} is {{ payload.severity }}"}}
    body.update(overrides)
    response = admin_api.post("/api/v1/rules", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def wait_event(event_id, timeout=20.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = Event.objects.get(pk=event_id)
        if event.status != "received":
            return event
        time.sleep(0.05)
    raise AssertionError(f"event {event_id} was not processed")


def test_signed_github_style_webhook_runs_the_rules_action(admin_api, api, core):
    make_rule(admin_api)
    enabled = admin_api.post("/api/v1/triggers/core.webhook/webhook/enable", {"hmac_secret": "s3cr3t"}, format="json")
    assert enabled.status_code == 201
    url = enabled.json()["url"]
    assert url.startswith("/api/v1/webhooks/") and enabled.json()["key"] in url

    body = json.dumps({"severity": "critical", "host": "db-1"}).encode()
    accepted = api.post(url, body, content_type="application/json", HTTP_X_HUB_SIGNATURE_256=sign("s3cr3t", body))
    assert accepted.status_code == 202, accepted.content
    event_id = accepted.json()["event_id"]
    event = wait_event(event_id)
    assert event.payload == {"severity": "critical", "host": "db-1"}
    assert event.meta["source_ip"] == "127.0.0.1" and "X-Hub-Signature-256" in event.meta["headers"]
    enforcement = Enforcement.objects.get(event_id=event_id)
    assert enforcement.status == "matched" and enforcement.rule_ref == "core.echo_on_hook"
    execution = wait_for(enforcement.execution_id, "succeeded")
    assert execution.result["stdout"] == "db-1 is critical\n"
    assert execution.rule.ref == "core.echo_on_hook" and execution.trigger_event_id == event_id
    assert execution.started_by.username == "root"  # runs as the rule's owner

    before = Event.objects.count()
    wrong = api.post(url, body, content_type="application/json", HTTP_X_HUB_SIGNATURE_256=sign("other", body))
    assert wrong.status_code == 401
    unsigned = api.post(url, body, content_type="application/json")
    assert unsigned.status_code == 401
    assert Event.objects.count() == before

    trace = admin_api.get(f"/api/v1/executions/{execution.pk}/trace").json()
    assert trace["event"]["id"] == event_id and trace["enforcement"]["rule"] == "core.echo_on_hook"
    assert trace["root"]["id"] == execution.pk


def test_non_matching_payload_creates_no_enforcement(admin_api, api, core):
    make_rule(admin_api)
    url = admin_api.post("/api/v1/triggers/core.webhook/webhook/enable", {}, format="json").json()["url"]
    response = api.post(url, {"severity": "info", "host": "db-2"}, format="json")
    event = wait_event(response.json()["event_id"])
    assert event.status == "processed"
    assert not Enforcement.objects.filter(event=event).exists()


def test_webhook_options_cidr_size_rate_and_bad_json(admin_api, api, core):
    hook = admin_api.post("/api/v1/triggers/core.webhook/webhook/enable",
                          {"allowed_cidrs": ["10.0.0.0/8"]}, format="json").json()
    url = hook["url"]
    assert api.post(url, {"a": 1}, format="json").status_code == 403
    updated = admin_api.post("/api/v1/triggers/core.webhook/webhook/enable",
                             {"allowed_cidrs": ["127.0.0.0/8"], "max_payload_bytes": 50, "rate_limit_per_minute": 3},
                             format="json")
    assert updated.status_code == 200 and updated.json()["key"] is None
    assert api.post(url, {"big": "x" * 100}, format="json").status_code == 413
    assert api.post(url, b"{not json", content_type="application/json").status_code == 400
    statuses = [api.post(url, {"n": i}, format="json").status_code for i in range(4)]
    assert statuses[:2] == [202, 202] and 429 in statuses  # the bad-JSON post above counted too
    bad = admin_api.post("/api/v1/triggers/core.webhook/webhook/enable", {"allowed_cidrs": ["nope"]}, format="json")
    assert bad.status_code == 400 and "allowed_cidrs" in bad.json()
    new = admin_api.post("/api/v1/triggers/core.webhook/webhook/regenerate").json()
    assert new["url"] != url and api.post(url, {}, format="json").status_code == 404
    assert admin_api.post("/api/v1/triggers/core.webhook/webhook/disable").status_code == 204
    assert api.post(new["url"], {}, format="json").status_code == 404


def test_each_rule_and_event_is_enforced_once_and_a_failing_rule_blocks_nothing(admin_api, core):
    make_rule(admin_api)
    make_rule(admin_api, name="broken", action_params={"message": "{{ payload.nope.deeper }}"})
    make_rule(admin_api, name="second", action_params={"message": "second"})
    emitted = admin_api.post("/api/v1/events", {"trigger": "core.webhook",
                                                "payload": {"severity": "critical", "host": "h"}}, format="json")
    assert emitted.status_code == 201
    event = wait_event(emitted.json()["id"])
    engine.process(event.pk)  # a duplicate message: nothing new
    engine.process(event.pk)
    # A duplicate that looks like a first delivery (not processed yet, never re-sent): the unique
    # (rule, event) constraint still keeps it from enforcing anything twice.
    Event.objects.filter(pk=event.pk).update(status="received", processed_at=None)
    engine.process(event.pk)
    assert Event.objects.get(pk=event.pk).status == "processed"
    enforcements = {e.rule_ref: e for e in Enforcement.objects.filter(event=event)}
    assert set(enforcements) == {"core.echo_on_hook", "core.broken", "core.second"}
    assert enforcements["core.broken"].status == "failed"
    assert "nope" in enforcements["core.broken"].failure_reason
    assert Execution.objects.filter(trigger_event=event).count() == 2
    listed = admin_api.get(f"/api/v1/enforcements?event={event.pk}&status=failed").json()
    assert [e["rule"] for e in listed["results"]] == ["core.broken"]


def test_invalid_payload_is_kept_marked_and_not_matched(admin_api, core):
    admin_api.post("/api/v1/triggers", {"pack": "core", "name": "ticket", "payload_schema": {
        "type": "object", "required": ["id"], "properties": {"id": {"type": "integer"}}}}, format="json")
    make_rule(admin_api, name="on_ticket", trigger="core.ticket", criteria={})
    response = admin_api.post("/api/v1/events", {"trigger": "core.ticket", "payload": {"id": "x"}}, format="json")
    event = Event.objects.get(pk=response.json()["id"])
    assert event.status == "invalid" and "payload id" in event.error
    again = admin_api.post(f"/api/v1/events/{event.pk}/re-emit")
    assert again.status_code == 201 and again.json()["status"] == "invalid"
    assert not Enforcement.objects.exists()


def test_execution_completed_chains_rules(admin_api, core):
    make_rule(admin_api, name="chain", trigger="core.execution_completed",
              criteria={"payload.action": {"type": "eq", "pattern": "core.noop"}},
              action_params={"message": "{{ payload.action }} {{ payload.status }}"})
    first = admin_api.post("/api/v1/actions/core.noop/execute", {}, format="json").json()
    wait_for(first["id"], "succeeded")
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not Execution.objects.filter(rule__ref="core.chain").exists():
        time.sleep(0.05)
    chained = wait_for(Execution.objects.get(rule__ref="core.chain").pk, "succeeded")
    assert chained.result["stdout"] == "core.noop succeeded\n"
    assert Rule.objects.get(ref="core.chain").enabled
    disabled = admin_api.post("/api/v1/rules/core.chain/disable")
    assert disabled.status_code == 200 and disabled.json()["enabled"] is False


def test_rules_cannot_run_what_their_owner_may_not_execute(admin_api, core, db):
    from rest_framework.test import APIClient

    from apps.accounts.models import PermissionAssignment, PermissionSet
    from tests.factories import UserFactory

    alice = UserFactory(username="alice")
    PermissionAssignment.objects.create(identity=alice, permission_set=PermissionSet.objects.get(name="editor"),
                                        packs=["ops"])
    client = APIClient()
    client.force_authenticate(alice)
    admin_api.post("/api/v1/packs", {"ref": "ops", "version": "1.0.0"}, format="json")
    admin_api.post("/api/v1/triggers", {"pack": "ops", "name": "alert"}, format="json")
    sneaky = client.post("/api/v1/rules", {"pack": "ops", "name": "sneaky", "trigger": "ops.alert",
                                           "action": "core.local", "action_params": {"cmd": "id"}}, format="json")
    assert sneaky.status_code == 400 and "action" in sneaky.json()
    # A rule made by someone allowed, whose owner later loses the grant, fails its enforcement instead.
    rule = make_rule(admin_api, name="later", trigger="core.webhook", criteria={})
    Rule.objects.filter(ref=rule["ref"]).update(owner=alice)
    event = admin_api.post("/api/v1/events", {"trigger": "core.webhook", "payload": {"host": "h"}},
                           format="json").json()
    wait_event(event["id"])
    enforcement = Enforcement.objects.get(event_id=event["id"], rule_ref="core.later")
    assert enforcement.status == "failed" and "may not execute" in enforcement.failure_reason
    assert not Execution.objects.filter(trigger_event_id=event["id"]).exists()


def test_disabled_trigger_accepts_nothing_and_secret_patterns_stay_secret(admin_api, api, core):
    from apps.keys import services as keys
    from apps.keys.models import Key

    url = admin_api.post("/api/v1/triggers/core.webhook/webhook/enable", {}, format="json").json()["url"]
    assert admin_api.post("/api/v1/triggers/core.webhook/disable").status_code == 200
    assert api.post(url, {"a": 1}, format="json").status_code == 409
    assert admin_api.post("/api/v1/events", {"trigger": "core.webhook", "payload": {}},
                          format="json").status_code == 409
    assert not Event.objects.exists()
    key = Key(name="pager_token", scope="system")
    keys.apply_value(key, "tok-9f8e7d", secret=True)
    key.save()
    answer = admin_api.post("/api/v1/rules/test", {"rule": {
        "trigger": "core.webhook", "action": "core.noop",
        "criteria": {"payload.x": {"type": "equals", "pattern": "{{ kv.system.pager_token }}"}}},
        "payload": {"x": "tok-9f8e7d"}}, format="json").json()
    assert answer["matched"] is True
    assert "tok-9f8e7d" not in json.dumps(answer["criteria"][0]["pattern"])
    lenient = admin_api.post("/api/v1/rules/test", {"rule": {
        "trigger": "core.webhook", "action": "core.noop", "condition": "{{ payload.count > 3 or payload.force }}"},
        "payload": {"count": 1}}, format="json").json()
    assert lenient == {**lenient, "matched": False, "condition": False, "error": None}
