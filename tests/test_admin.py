"""The Django admin: every model registered, pages render, secrets stay hidden, system records are read-only."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group
from django.urls import reverse
from django.utils import timezone

from apps.accounts.models import ApiToken
from apps.executions.models import Execution, OutputChunk
from apps.keys.models import Key
from apps.packs.models import Pack, Runtime
from apps.triggers.models import Webhook

from .factories import (
    ActionFactory,
    ArtifactFactory,
    EnforcementFactory,
    EventFactory,
    ExecutionFactory,
    InquiryFactory,
    KeyFactory,
    NotificationFactory,
    PackFactory,
    PermissionAssignmentFactory,
    PermissionSetFactory,
    PolicyFactory,
    RuleFactory,
    SensorFactory,
    TaskExecutionFactory,
    TriggerFactory,
    UserFactory,
    WorkerFactory,
    WorkflowDefinitionFactory,
    WorkflowExecutionFactory,
)

pytestmark = pytest.mark.django_db

SECRET_CIPHERTEXT = "v1:U0VOVElORUwtY2lwaGVydGV4dC1kby1ub3Qtc2hvdw=="


def changelist_url(model) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")


def change_url(obj) -> str:
    return reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk])


def add_url(model) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_add")


# Each builder returns (object, text identifying it on its pages, a search term that finds it).
def _user():
    return UserFactory(username="alice-ops", is_service_account=True), "alice-ops", "alice"


def _permission_set():
    return PermissionSetFactory(name="deployers"), "deployers", "deploy"


def _permission_assignment():
    assignment = PermissionAssignmentFactory(
        identity=UserFactory(username="bob-ops"), permission_set=PermissionSetFactory(name="restarters")
    )
    return assignment, "restarters", "bob-ops"


def _api_token():
    token, _raw = ApiToken.issue(UserFactory(username="ci-bot", is_service_account=True), "ci pipeline")
    return token, token.prefix, "pipeline"


def _audit_event():
    from apps.accounts.audit import record

    event = record(None, "login_failed", actor_name="mallory-the-guesser", object_type="identity", object_ref="x")
    return event, "mallory-the-guesser", "mallory"


def _pack():
    return PackFactory(ref="netops", label="Network operations"), "netops", "netops"


def _runtime():
    runtime = Runtime.objects.create(name="ruby", kind="shell", interpreter="/usr/bin/ruby")
    return runtime, "/usr/bin/ruby", "ruby"


def _key():
    return KeyFactory(name="max_replicas", value={"replicas": 7}), "max_replicas", "replicas"


def _action():
    action = ActionFactory(pack=PackFactory(ref="ops"), name="restart_service")
    return action, "ops.restart_service", "restart"


def _execution():
    execution = ExecutionFactory(action=ActionFactory(pack=PackFactory(ref="ops"), name="patch_host"))
    return execution, "ops.patch_host", "patch_host"


def _output_chunk():
    execution = ExecutionFactory(action=ActionFactory(pack=PackFactory(ref="ops"), name="tail_log"))
    chunk = OutputChunk.objects.create(execution=execution, stream="stdout", offset=0, data="hello-from-stdout\n")
    return chunk, "hello-from-stdout", "tail_log"


def _artifact():
    return ArtifactFactory(name="diff-report.txt"), "diff-report.txt", "diff-report"


def _policy():
    policy = PolicyFactory(pack=PackFactory(ref="ops"), name="one_at_a_time")
    return policy, "ops.one_at_a_time", "one_at_a_time"


def _worker():
    return WorkerFactory(name="node-7:4242:w", hostname="node-7"), "node-7:4242:w", "node-7"


def _trigger():
    trigger = TriggerFactory(pack=PackFactory(ref="tickets"), name="new_ticket")
    return trigger, "tickets.new_ticket", "new_ticket"


def _webhook():
    trigger = TriggerFactory(pack=PackFactory(ref="hooks"), name="github_push")
    webhook = Webhook.objects.create(
        trigger=trigger, key_hash="f" * 64, key_prefix="whk_abcd", hmac_secret_encrypted="v1:SECRETHMAC=="
    )
    return webhook, "hooks.github_push", "github_push"


def _sensor():
    sensor = SensorFactory(pack=PackFactory(ref="monitoring"), name="disk_watch")
    return sensor, "monitoring.disk_watch", "disk_watch"


def _event():
    event = EventFactory(trigger=TriggerFactory(pack=PackFactory(ref="alerts"), name="disk_full"))
    return event, "alerts.disk_full", "disk_full"


def _rule():
    rule = RuleFactory(pack=PackFactory(ref="paging"), name="page_on_critical")
    return rule, "paging.page_on_critical", "page_on"


def _enforcement():
    enforcement = EnforcementFactory(rule=RuleFactory(pack=PackFactory(ref="paging"), name="page_db"))
    return enforcement, "paging.page_db", "page_db"


def _workflow_definition():
    definition = WorkflowDefinitionFactory(action=ActionFactory(
        pack=PackFactory(ref="deploy"), name="rollout", runner_type=Runtime.objects.get(name="workflow"),
    ))
    return definition, "deploy.rollout", "rollout"


def _workflow_execution():
    execution = ExecutionFactory(action=ActionFactory(pack=PackFactory(ref="deploy"), name="canary"), status="running")
    return WorkflowExecutionFactory(execution=execution), "deploy.canary", "canary"


def _task_execution():
    return TaskExecutionFactory(task_name="fetch_hosts"), "fetch_hosts", "fetch_hosts"


def _inquiry():
    return InquiryFactory(prompt="Reboot the database hosts?"), "Reboot the database hosts?", "database"


def _notification():
    notification = NotificationFactory(topic="execution:4242", type="execution.status")
    return notification, "execution:4242", "4242"


CASES = {
    "accounts.User": _user,
    "accounts.PermissionSet": _permission_set,
    "accounts.PermissionAssignment": _permission_assignment,
    "accounts.ApiToken": _api_token,
    "accounts.AuditEvent": _audit_event,
    "packs.Pack": _pack,
    "packs.Runtime": _runtime,
    "keys.Key": _key,
    "actions.Action": _action,
    "executions.Execution": _execution,
    "executions.OutputChunk": _output_chunk,
    "executions.Artifact": _artifact,
    "executions.Policy": _policy,
    "executions.Worker": _worker,
    "triggers.Trigger": _trigger,
    "triggers.Webhook": _webhook,
    "triggers.Sensor": _sensor,
    "triggers.Event": _event,
    "rules.Rule": _rule,
    "rules.Enforcement": _enforcement,
    "workflows.WorkflowDefinition": _workflow_definition,
    "workflows.WorkflowExecution": _workflow_execution,
    "workflows.TaskExecution": _task_execution,
    "inquiries.Inquiry": _inquiry,
    "notifications.Notification": _notification,
}

# Written by the system (or issued once through the API): never added here.
NO_ADD = {
    "accounts.ApiToken", "accounts.AuditEvent", "executions.Execution", "executions.OutputChunk", "executions.Artifact",
    "executions.Worker", "triggers.Webhook", "triggers.Event", "rules.Enforcement", "workflows.WorkflowDefinition",
    "workflows.WorkflowExecution", "workflows.TaskExecution", "inquiries.Inquiry", "notifications.Notification",
}
# ... and never changed here either.
VIEW_ONLY = NO_ADD - {"accounts.ApiToken", "triggers.Webhook"}


def test_every_model_is_registered_and_covered():
    registered = {model._meta.label for model in admin.site._registry if model is not Group}
    assert registered == set(CASES)


@pytest.mark.parametrize("label", sorted(CASES))
def test_changelist_search_and_change_page(admin_client, label):
    obj, needle, term = CASES[label]()
    model = type(obj)

    response = admin_client.get(changelist_url(model))
    assert response.status_code == 200
    assert needle in response.content.decode()

    response = admin_client.get(changelist_url(model), {"q": term})
    assert response.status_code == 200
    assert needle in response.content.decode()

    response = admin_client.get(changelist_url(model), {"q": "x"})
    assert response.status_code == 200

    response = admin_client.get(changelist_url(model), {"q": str(obj.pk)})
    assert response.status_code == 200

    response = admin_client.get(change_url(obj))
    assert response.status_code == 200
    assert needle in response.content.decode()


@pytest.mark.parametrize("label", sorted(CASES))
def test_add_page(admin_client, label):
    model = next(m for m in admin.site._registry if m._meta.label == label)
    response = admin_client.get(add_url(model))
    assert response.status_code == (403 if label in NO_ADD else 200)


@pytest.mark.parametrize("label", sorted(VIEW_ONLY))
def test_system_records_are_view_only(admin_client, label):
    obj, needle, _term = CASES[label]()
    response = admin_client.get(change_url(obj))
    assert response.status_code == 200
    content = response.content.decode()
    assert needle in content
    assert 'name="_save"' not in content
    assert 'name="_continue"' not in content
    # A forged POST changes nothing.
    response = admin_client.post(change_url(obj), {})
    assert response.status_code == 403


def test_event_and_enforcement_are_read_only(admin_client):
    enforcement = EnforcementFactory()
    for obj in (enforcement, enforcement.event):
        response = admin_client.get(change_url(obj))
        assert response.status_code == 200
        assert 'name="_save"' not in response.content.decode()
        assert admin_client.get(add_url(type(obj))).status_code == 403
        assert admin_client.post(add_url(type(obj)), {}).status_code == 403


def test_secret_key_is_never_shown(admin_client):
    secret = Key.objects.create(
        name="db_password", scope="system", secret=True, value=None, encrypted_value=SECRET_CIPHERTEXT, key_version=1
    )
    plain = KeyFactory(name="greeting", value="hello-plain-value")

    listing = admin_client.get(changelist_url(Key)).content.decode()
    assert "db_password" in listing
    assert SECRET_CIPHERTEXT not in listing
    assert "U0VOVElORUwtY2lwaGVydGV4dC1kby1ub3Qtc2hvdw" not in listing
    assert "********" in listing
    assert "hello-plain-value" in listing

    page = admin_client.get(change_url(secret)).content.decode()
    assert "db_password" in page
    assert SECRET_CIPHERTEXT not in page
    assert "U0VOVElORUwtY2lwaGVydGV4dC1kby1ub3Qtc2hvdw" not in page
    assert 'name="encrypted_value"' not in page
    assert 'name="value"' not in page
    assert "********" in page

    page = admin_client.get(change_url(plain)).content.decode()
    assert "hello-plain-value" in page
    assert 'name="encrypted_value"' not in page


def test_secret_key_identity_cannot_be_changed(admin_client):
    secret = Key.objects.create(
        name="db_password", scope="system", secret=True, value=None, encrypted_value=SECRET_CIPHERTEXT, key_version=1
    )
    response = admin_client.post(
        change_url(secret),
        {"name": "renamed", "scope": "user", "owner": "eve", "value": '"leak"', "expires_at_0": "", "expires_at_1": ""},
    )
    assert response.status_code == 302
    secret.refresh_from_db()
    assert (secret.name, secret.scope, secret.owner, secret.value) == ("db_password", "system", "", None)
    assert secret.encrypted_value == SECRET_CIPHERTEXT


def test_key_added_through_admin_is_plain(admin_client, admin_user):
    response = admin_client.post(
        add_url(Key), {"name": "region", "scope": "system", "owner": "", "value": '"eu-west-1"'}
    )
    assert response.status_code == 302
    key = Key.objects.get(name="region")
    assert key.value == "eu-west-1"
    assert key.secret is False
    assert key.created_by == admin_user


def test_api_token_hash_hidden_and_revoke_action(admin_client):
    token, raw = ApiToken.issue(UserFactory(username="ci-bot"), "ci")
    other, _ = ApiToken.issue(UserFactory(username="ci-bot-2"), "ci2")

    for url in (changelist_url(ApiToken), change_url(token)):
        content = admin_client.get(url).content.decode()
        assert token.key_hash not in content
        assert raw not in content
        assert token.prefix in content

    response = admin_client.post(
        changelist_url(ApiToken), {"action": "revoke", "_selected_action": [token.pk]}, follow=True
    )
    assert response.status_code == 200
    token.refresh_from_db()
    other.refresh_from_db()
    assert token.revoked_at is not None
    assert not token.is_active
    assert other.revoked_at is None


def test_webhook_secrets_hidden(admin_client):
    webhook, _needle, _term = _webhook()
    for url in (changelist_url(Webhook), change_url(webhook)):
        content = admin_client.get(url).content.decode()
        assert webhook.key_hash not in content
        assert "SECRETHMAC" not in content


def test_pack_component_ref_is_computed_and_read_only(admin_client):
    pack = PackFactory(ref="ops")
    data = {
        "pack": pack.pk, "name": "restart_service", "ref": "evil.ref", "description": "", "enabled": "on",
        "tags": "[]", "runner_type": "shell", "entry_point": "restart.sh", "timeout": "60",
        "parameter_format": "json", "output_format": "text", "parameters": "{}",
    }
    from apps.actions.models import Action

    response = admin_client.post(add_url(Action), data)
    assert response.status_code == 302, response.content.decode()[:2000]
    action = Action.objects.get(name="restart_service")
    assert action.ref == "ops.restart_service"

    page = admin_client.get(change_url(action)).content.decode()
    assert 'name="ref"' not in page

    # The same <pack>.<name> again is a form error, not an IntegrityError.
    response = admin_client.post(add_url(Action), data)
    assert response.status_code == 200
    assert "ops.restart_service already exists" in response.content.decode()


def test_builtin_permission_set_keeps_its_name(admin_client):
    from apps.accounts.models import PermissionSet
    from apps.accounts.services import sync_builtin_sets

    sync_builtin_sets()  # a transactional test's flush may have removed what the data migration made
    builtin = PermissionSet.objects.get(builtin=True, name="viewer")
    page = admin_client.get(change_url(builtin)).content.decode()
    assert 'name="name"' not in page
    assert admin_client.get(reverse("admin:accounts_permissionset_delete", args=[builtin.pk])).status_code == 403


def test_pack_ref_and_runtime_name_read_only_once_created(admin_client):
    pack = PackFactory(ref="netops")
    assert 'name="ref"' not in admin_client.get(change_url(pack)).content.decode()
    assert 'name="ref"' in admin_client.get(add_url(Pack)).content.decode()
    runtime = Runtime.objects.get(name="shell")
    assert 'name="name"' not in admin_client.get(change_url(runtime)).content.decode()


def test_execution_change_page_links_related_objects(admin_client):
    enforcement = EnforcementFactory()
    worker = WorkerFactory()
    parent = ExecutionFactory(status="running")
    execution = ExecutionFactory(
        action=enforcement.rule.action, parent=parent, enforcement=enforcement, rule=enforcement.rule,
        trigger_event=enforcement.event, worker=worker, status="succeeded", result={"exit_code": 0},
        started_at=timezone.now() - timedelta(seconds=3), finished_at=timezone.now(),
    )
    enforcement.execution = execution
    enforcement.save()
    child = ExecutionFactory(parent=execution)
    OutputChunk.objects.create(execution=execution, stream="stdout", offset=0, data="line one\n")
    execution.stdout_size = 9
    execution.save()

    page = admin_client.get(change_url(execution)).content.decode()
    for obj in (execution.action, parent, enforcement, enforcement.rule, enforcement.event, worker, child):
        assert change_url(obj) in page, type(obj).__name__
    assert "line one" in page

    listing = admin_client.get(changelist_url(Execution)).content.decode()
    for obj in (execution.action, parent, enforcement, enforcement.rule, enforcement.event, worker):
        assert change_url(obj) in listing, type(obj).__name__

    page = admin_client.get(change_url(enforcement)).content.decode()
    for obj in (enforcement.rule, enforcement.event, execution):
        assert change_url(obj) in page, type(obj).__name__

    page = admin_client.get(change_url(enforcement.event)).content.decode()
    assert change_url(enforcement.event.trigger) in page
    assert change_url(enforcement) in page


def test_inquiry_and_task_execution_link_to_executions(admin_client):
    inquiry = InquiryFactory()
    assert change_url(inquiry.execution) in admin_client.get(change_url(inquiry)).content.decode()
    assert change_url(inquiry.execution) in admin_client.get(changelist_url(type(inquiry))).content.decode()

    child = ExecutionFactory()
    task = TaskExecutionFactory(execution=child)
    for url in (change_url(task), changelist_url(type(task))):
        page = admin_client.get(url).content.decode()
        assert change_url(task.workflow_execution) in page
        assert change_url(child) in page
    page = admin_client.get(change_url(task.workflow_execution)).content.decode()
    assert change_url(child) in page
    assert change_url(task.workflow_execution.execution) in page


def test_execution_changelist_query_count(admin_client, django_assert_max_num_queries):
    worker = WorkerFactory()
    rule = RuleFactory()
    event = EventFactory(trigger=rule.trigger)
    enforcement = EnforcementFactory(rule=rule, event=event)
    starter = UserFactory(username="starter")
    parent = ExecutionFactory()
    for i in range(30):
        ExecutionFactory(
            parent=parent if i % 2 else None, worker=worker, rule=rule, enforcement=enforcement,
            trigger_event=event, started_by=starter, status="succeeded",
            started_at=timezone.now() - timedelta(seconds=i + 1), finished_at=timezone.now(),
        )
    admin_client.get(changelist_url(Execution))  # warm caches (content types, sessions)

    with django_assert_max_num_queries(12):
        response = admin_client.get(changelist_url(Execution))
    assert response.status_code == 200
    assert response.content.decode().count(reverse("admin:executions_execution_change", args=[parent.pk])) >= 15


def test_id_search(admin_client):
    executions = [ExecutionFactory() for _ in range(3)]
    target = executions[1]
    content = admin_client.get(changelist_url(Execution), {"q": f"#{target.pk}"}).content.decode()
    assert change_url(target) in content
    assert change_url(executions[0]) not in content
    # Out of range numbers do not crash.
    assert admin_client.get(changelist_url(Execution), {"q": "9" * 40}).status_code == 200
