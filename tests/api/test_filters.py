"""The list filters of SPEC §11: every test creates matching and non-matching rows and checks that exactly
the matching ones come back."""
from __future__ import annotations

from datetime import timedelta
from urllib.parse import quote

import pytest
from django.utils import timezone

from apps.accounts.models import PermissionAssignment, PermissionSet
from apps.executions.models import Execution
from tests.factories import (
    ActionFactory,
    EnforcementFactory,
    EventFactory,
    ExecutionFactory,
    InquiryFactory,
    PackFactory,
    PolicyFactory,
    RuleFactory,
    SensorFactory,
    TriggerFactory,
)

from .resources import API

pytestmark = pytest.mark.django_db


def ids(client, url) -> set:
    response = client.get(url)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["count"] == len(body["results"])
    return {row["id"] for row in body["results"]}


# --- pack components by pack ---------------------------------------------------------------------------------

def _two_packs(factory):
    ours, theirs = PackFactory(ref="ours"), PackFactory(ref="theirs")
    mine = {factory(pack=ours).pk for _ in range(2)}
    factory(pack=theirs)
    return mine


@pytest.mark.parametrize(("resource", "factory"), [
    ("actions", ActionFactory), ("triggers", TriggerFactory), ("sensors", SensorFactory),
    ("rules", RuleFactory), ("policies", PolicyFactory),
], ids=["actions", "triggers", "sensors", "rules", "policies"])
def test_components_filter_by_pack(viewer_api, resource, factory):
    mine = _two_packs(factory)
    assert ids(viewer_api, f"{API}/{resource}?pack=ours") == mine
    assert ids(viewer_api, f"{API}/{resource}?pack=nosuchpack") == set()
    assert len(ids(viewer_api, f"{API}/{resource}")) == 3


def test_rules_filter_by_trigger_and_action(viewer_api):
    a, b = RuleFactory(), RuleFactory()
    assert ids(viewer_api, f"{API}/rules?trigger={a.trigger.ref}") == {a.pk}
    assert ids(viewer_api, f"{API}/rules?action={b.action.ref}") == {b.pk}


def test_sensors_filter_by_trigger(viewer_api):
    trigger = TriggerFactory()
    watching = SensorFactory()
    watching.trigger_types.set([trigger])
    SensorFactory()
    assert ids(viewer_api, f"{API}/sensors?trigger={trigger.ref}") == {watching.pk}


# --- events --------------------------------------------------------------------------------------------------

def test_events_filter_by_trigger(viewer_api):
    hook, timer = TriggerFactory(name="hook"), TriggerFactory(name="timer")
    hooked = {EventFactory(trigger=hook).pk for _ in range(2)}
    EventFactory(trigger=timer)
    assert ids(viewer_api, f"{API}/events?trigger={hook.ref}") == hooked
    assert ids(viewer_api, f"{API}/events?trigger=core.nosuch") == set()


def test_events_are_newest_first(viewer_api):
    first, second = EventFactory(), EventFactory()
    results = viewer_api.get(f"{API}/events").json()["results"]
    assert [e["id"] for e in results] == [second.pk, first.pk]
    assert results[0]["trigger"] == second.trigger_ref


# --- enforcements --------------------------------------------------------------------------------------------

def test_enforcements_filter_by_rule_event_and_status(viewer_api):
    rule, other_rule = RuleFactory(), RuleFactory()
    matched = EnforcementFactory(rule=rule, status="matched")
    failed = EnforcementFactory(rule=rule, status="failed")
    elsewhere = EnforcementFactory(rule=other_rule, status="matched", event=matched.event)

    assert ids(viewer_api, f"{API}/enforcements?rule={rule.ref}") == {matched.pk, failed.pk}
    assert ids(viewer_api, f"{API}/enforcements?event={matched.event_id}") == {matched.pk, elsewhere.pk}
    assert ids(viewer_api, f"{API}/enforcements?status=failed") == {failed.pk}
    assert ids(viewer_api, f"{API}/enforcements?status=matched&rule={rule.ref}") == {matched.pk}
    body = viewer_api.get(f"{API}/enforcements/{failed.pk}").json()
    assert body["rule"] == rule.ref and body["status"] == "failed"


# --- executions ----------------------------------------------------------------------------------------------

@pytest.fixture
def executions(db):
    echo = ActionFactory(pack=PackFactory(ref="core"), name="echo")
    deploy = ActionFactory(pack=PackFactory(ref="ops"), name="deploy")
    rule = RuleFactory(pack=echo.pack, action=echo)
    enforcement = EnforcementFactory(rule=rule)
    rows = {
        "running": ExecutionFactory(action=echo, status="running"),
        "failed": ExecutionFactory(action=deploy, status="failed"),
        "succeeded": ExecutionFactory(action=echo, status="succeeded", rule=rule, enforcement=enforcement),
        "requested": ExecutionFactory(action=deploy, status="requested"),
    }
    rows["child"] = ExecutionFactory(action=echo, status="succeeded", parent=rows["running"])
    rows["rule"], rows["enforcement"] = rule, enforcement
    return rows


def test_executions_filter_by_status(viewer_api, executions):
    e = executions
    assert ids(viewer_api, f"{API}/executions?status=running") == {e["running"].pk}
    assert ids(viewer_api, f"{API}/executions?status=succeeded") == {e["succeeded"].pk, e["child"].pk}
    assert ids(viewer_api, f"{API}/executions?status=running,failed") == {e["running"].pk, e["failed"].pk}
    assert ids(viewer_api, f"{API}/executions?status=paused") == set()


def test_executions_filter_by_action_and_pack(viewer_api, executions):
    e = executions
    assert ids(viewer_api, f"{API}/executions?action=ops.deploy") == {e["failed"].pk, e["requested"].pk}
    assert ids(viewer_api, f"{API}/executions?pack=ops") == {e["failed"].pk, e["requested"].pk}
    assert ids(viewer_api, f"{API}/executions?pack=core&status=succeeded") == {e["succeeded"].pk, e["child"].pk}


def test_executions_filter_by_rule_enforcement_and_parent(viewer_api, executions):
    e = executions
    assert ids(viewer_api, f"{API}/executions?rule={e['rule'].ref}") == {e["succeeded"].pk}
    assert ids(viewer_api, f"{API}/executions?enforcement={e['enforcement'].pk}") == {e["succeeded"].pk}
    assert ids(viewer_api, f"{API}/executions?parent={e['running'].pk}") == {e["child"].pk}
    assert e["child"].pk not in ids(viewer_api, f"{API}/executions?root=true")
    detail = viewer_api.get(f"{API}/executions/{e['running'].pk}").json()
    assert detail["children"] == [e["child"].pk]
    assert viewer_api.get(f"{API}/executions/{e['child'].pk}").json()["parent"] == e["running"].pk


def test_executions_filter_by_created_window(viewer_api, executions):
    now = timezone.now()
    e = executions
    Execution.objects.filter(pk=e["running"].pk).update(created=now - timedelta(days=3))
    Execution.objects.filter(pk=e["failed"].pk).update(created=now - timedelta(days=2))
    Execution.objects.exclude(pk__in=[e["running"].pk, e["failed"].pk]).update(created=now - timedelta(hours=1))

    def iso(delta):
        return quote((now - delta).isoformat())

    assert ids(viewer_api, f"{API}/executions?created_before={iso(timedelta(days=2, hours=12))}") == {
        e["running"].pk}
    assert ids(viewer_api, f"{API}/executions?created_after={iso(timedelta(days=2, hours=12))}"
                           f"&created_before={iso(timedelta(days=1))}") == {e["failed"].pk}
    assert ids(viewer_api, f"{API}/executions?created_after={iso(timedelta(days=1))}") == {
        e["succeeded"].pk, e["requested"].pk, e["child"].pk}


def test_executions_ordering(viewer_api, executions):
    ascending = [row["id"] for row in viewer_api.get(f"{API}/executions?ordering=id").json()["results"]]
    assert ascending == sorted(ascending) and len(ascending) >= 5
    default = [row["id"] for row in viewer_api.get(f"{API}/executions").json()["results"]]
    assert default == sorted(ascending, reverse=True)
    by_created = [row["id"] for row in viewer_api.get(f"{API}/executions?ordering=-created").json()["results"]]
    assert set(by_created) == set(ascending)


def test_execution_record_fields(viewer_api, executions):
    body = viewer_api.get(f"{API}/executions/{executions['succeeded'].pk}").json()
    assert body["action"] == "core.echo"
    assert body["pack"] == "core"
    assert body["rule"] == executions["rule"].ref
    assert body["enforcement"] == executions["enforcement"].pk
    assert body["status"] == "succeeded"
    for field in ("parameters", "result", "parent", "children", "trigger_event", "started_by", "worker",
                  "original", "created", "started_at", "finished_at", "duration_ms", "queue_position",
                  "waiting_reason"):
        assert field in body


# --- inquiries -----------------------------------------------------------------------------------------------

def test_inquiries_filter_by_status(viewer_api):
    pending = InquiryFactory(status="pending")
    responded = InquiryFactory(status="responded")
    assert ids(viewer_api, f"{API}/inquiries?status=pending") == {pending.pk}
    assert ids(viewer_api, f"{API}/inquiries?status=responded") == {responded.pk}


def test_inquiries_assigned_to_me(operator_api):
    me = operator_api.user.username  # holds the "operator" permission set
    PermissionAssignment.objects.create(identity=operator_api.user,
                                        permission_set=PermissionSet.objects.create(name="dba"))
    mine_by_name = InquiryFactory(assignees=["someone", me])
    mine_by_role = InquiryFactory(roles=["operator"])
    mine_by_second_role = InquiryFactory(roles=["approvers", "dba"])
    not_mine = [
        InquiryFactory(assignees=["someone"]),
        InquiryFactory(assignees=[f"{me}-2"]),  # a longer username that starts with mine
        InquiryFactory(roles=["operators"]),  # a role whose name starts with mine
        InquiryFactory(roles=["editor"]),
        InquiryFactory(),
    ]
    mine = {mine_by_name.pk, mine_by_role.pk, mine_by_second_role.pk}
    assert ids(operator_api, f"{API}/inquiries?assigned_to_me=true") == mine
    assert ids(operator_api, f"{API}/inquiries?assigned_to_me=false") == {i.pk for i in not_mine}
    assert ids(operator_api, f"{API}/inquiries?assigned_to_me=true&status=responded") == set()


def test_inquiries_assigned_to_a_user_without_roles(viewer_api, editor_api):
    for_editor = InquiryFactory(assignees=[editor_api.user.username])
    InquiryFactory(roles=["operator"])
    assert ids(editor_api, f"{API}/inquiries?assigned_to_me=true") == {for_editor.pk}
    assert ids(viewer_api, f"{API}/inquiries?assigned_to_me=true") == set()
