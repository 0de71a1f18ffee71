"""The hand-written statements of the execution hot path return what the ORM would.

``apps.core.rows`` (reader, get_by_pk, insert), ``apps.actions.selectors.action_with_runtime``, the worker's
``claim``, direct scheduling of executions no policy concerns, ``represent`` of the 201 body, and the JWT
user read.
"""
from __future__ import annotations

import pytest
from django.db.models.signals import post_save
from django.utils import timezone
from rest_framework.exceptions import AuthenticationFailed
from rest_framework_simplejwt.tokens import AccessToken

from apps.accounts.audit import event as audit_event
from apps.accounts.audit import record
from apps.accounts.authentication import JWTAuthentication
from apps.accounts.models import AuditEvent
from apps.actions.models import Action
from apps.actions.selectors import action_with_runtime
from apps.core.rows import get_by_pk, insert, insert_linked
from apps.executions import executor, services
from apps.executions.api.serializers import ExecutionSerializer
from apps.executions.models import Execution
from tests.factories import ActionFactory, PolicyFactory, UserFactory

pytestmark = pytest.mark.django_db

FIELDS = [f.attname for f in Execution._meta.concrete_fields]


def orm_values(model, pk):
    obj = model.objects.get(pk=pk)
    return {f.attname: getattr(obj, f.attname) for f in model._meta.concrete_fields}


def test_get_by_pk_matches_the_orm_field_for_field():
    action = ActionFactory(parameters={"n": {"type": "integer", "default": 3}}, tags=["a", "b"])
    execution = services.create_execution(action, {"n": 4}, start=False)
    Execution.objects.filter(pk=execution.pk).update(result={"data": [1, {"x": None}]}, started_at=timezone.now())
    fast = get_by_pk(Execution, execution.pk)
    assert {name: getattr(fast, name) for name in FIELDS} == orm_values(Execution, execution.pk)
    assert fast.result == {"data": [1, {"x": None}]}  # JSON decoded, not text
    assert fast.started_at.tzinfo is not None
    assert get_by_pk(Execution, execution.pk + 10_000) is None


def test_fast_build_leaves_the_instance_as_the_orm_does():
    """RowReader builds instances without Model.__init__: same field values, state, deferral and saving."""
    from apps.core.rows import reader

    action = ActionFactory(parameters={"n": {"type": "integer"}})
    execution = services.create_execution(action, {"n": 1}, start=False)
    rows = reader(Execution, "e", exclude=frozenset({"parameters"}))
    assert rows.fast
    fast = get_by_pk(Execution, execution.pk)
    orm = Execution.objects.get(pk=execution.pk)
    assert {k: v for k, v in vars(fast).items() if k != "_state"} == \
        {k: v for k, v in vars(orm).items() if k != "_state"}
    assert (fast._state.adding, fast._state.db) == (False, orm._state.db)
    assert fast == orm and hash(fast) == hash(orm)
    assert fast.action.ref == action.ref  # relations load as usual
    deferred = reader(Execution, "e", write=True, exclude=frozenset({"parameters"}))
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {deferred.columns} FROM {deferred.table} e WHERE e.id = %s", [execution.pk])
        partial = deferred.build(cursor.fetchone())
    assert partial.get_deferred_fields() == {"parameters"}
    assert partial.parameters == orm.parameters  # read on first access, like QuerySet.defer()
    partial.status = "canceled"
    partial.save(update_fields=["status"])
    assert Execution.objects.get(pk=execution.pk).status == "canceled"


def test_update_writes_the_named_fields_like_save():
    from apps.core.rows import update

    action = ActionFactory(parameters={})
    execution = services.create_execution(action, {}, start=False)
    before = Execution.objects.get(pk=execution.pk)
    execution.result = {"data": {"k": [1, 2]}}
    execution.status = "canceled"
    execution.timeout = 99  # not named: not written
    update(execution, ("result", "status"))
    after = Execution.objects.get(pk=execution.pk)
    assert (after.result, after.status, after.timeout) == ({"data": {"k": [1, 2]}}, "canceled", before.timeout)
    assert after.updated == before.updated  # like save(update_fields=...) without "updated"


def test_update_goes_through_save_when_a_receiver_listens():
    from apps.core.rows import update

    seen = []

    def receiver(sender, instance, update_fields, **kwargs):
        seen.append(set(update_fields))

    action = ActionFactory()
    post_save.connect(receiver, sender=Action, dispatch_uid="test-update-receiver")
    try:
        action.description = "changed"
        update(action, ("description",))
    finally:
        post_save.disconnect(dispatch_uid="test-update-receiver", sender=Action)
    assert seen == [{"description"}]
    assert Action.objects.get(pk=action.pk).description == "changed"


def test_insert_writes_the_same_row_as_create():
    action = ActionFactory()
    user = UserFactory()
    fast = insert(Execution(action=action, action_ref=action.ref, pack_ref=action.pack.ref, runner_type="shell",
                            parameters={"message": "x"}, started_by=user, queue="attune"))
    assert fast.pk is not None and fast._state.adding is False
    stored = orm_values(Execution, fast.pk)
    assert stored["parameters"] == {"message": "x"}
    assert stored["started_by_id"] == user.pk
    assert stored["created"] is not None and stored["status"] == "requested"
    assert {name: getattr(fast, name) for name in FIELDS} == stored


def test_insert_goes_through_save_when_a_receiver_listens():
    seen = []

    def receiver(sender, instance, created, **kwargs):
        seen.append((instance.action, created))

    post_save.connect(receiver, sender=AuditEvent, dispatch_uid="test_hot_path")
    try:
        record(None, "test.event", object_type="thing", object_ref="x")
    finally:
        post_save.disconnect(dispatch_uid="test_hot_path", sender=AuditEvent)
    assert seen == [("test.event", True)]


def test_insert_linked_writes_both_rows_the_second_naming_the_first(django_assert_num_queries):
    from django.db import connection

    action = ActionFactory()
    user = UserFactory()
    execution = Execution(action=action, action_ref=action.ref, pack_ref=action.pack.ref, runner_type="noop",
                          parameters={"n": 1}, started_by=user, queue="attune")
    event = audit_event(user, "execution.create", object_type="execution", pack_ref=action.pack.ref,
                        action_ref=action.ref)
    # PostgreSQL: one statement; elsewhere two INSERTs in a transaction of their own (here a savepoint in
    # the test's transaction: SAVEPOINT, INSERT, INSERT, RELEASE)
    with django_assert_num_queries(1 if connection.vendor == "postgresql" else 4):
        insert_linked(execution, event, "object_ref")
    assert execution.pk and event.pk and event.object_ref == str(execution.pk)
    assert {name: getattr(execution, name) for name in FIELDS} == orm_values(Execution, execution.pk)
    stored = AuditEvent.objects.get(pk=event.pk)
    assert (stored.object_ref, stored.actor_id, stored.action, stored.pack_ref, stored.details) == (
        str(execution.pk), user.pk, "execution.create", action.pack.ref, {"action_ref": action.ref})
    assert {f.attname: getattr(event, f.attname) for f in AuditEvent._meta.concrete_fields} == \
        orm_values(AuditEvent, event.pk)


def test_insert_linked_writes_neither_row_when_one_fails():
    from django.db import IntegrityError, transaction

    action = ActionFactory()
    executions_before, events_before = Execution.objects.count(), AuditEvent.objects.count()
    execution = Execution(action=action, action_ref=action.ref, pack_ref=action.pack.ref, runner_type="noop",
                          parameters={}, queue="attune")
    event = audit_event(None, "execution.create", object_type="execution")
    event.action = None  # NOT NULL: the second INSERT fails
    with pytest.raises(IntegrityError), transaction.atomic():
        insert_linked(execution, event, "object_ref")
    assert (Execution.objects.count(), AuditEvent.objects.count()) == (executions_before, events_before)


def test_create_execution_writes_its_audit_event_with_it():
    action = ActionFactory()
    user = UserFactory()
    execution = services.create_execution(action, {"message": "hi"}, user=user,
                                          audit=audit_event(user, "execution.create", object_type="execution"))
    (stored,) = AuditEvent.objects.filter(action="execution.create")
    assert stored.object_ref == str(execution.pk) and stored.actor_id == user.pk


def test_action_with_runtime_by_ref_and_pk():
    action = ActionFactory()
    by_ref = action_with_runtime(ref=action.ref)
    by_pk = action_with_runtime(pk=action.pk)
    orm = Action.objects.select_related("pack", "runner_type").get(pk=action.pk)
    for found in (by_ref, by_pk):
        assert found.pk == action.pk and found.parameters == orm.parameters
        assert found.pack.ref == orm.pack.ref and found.runner_type.kind == orm.runner_type.kind
    assert action_with_runtime(ref="nope.nothing") is None
    with pytest.raises(TypeError):
        action_with_runtime(ref=action.ref, pk=action.pk)


def test_an_execution_no_policy_concerns_is_inserted_scheduled(django_capture_on_commit_callbacks):
    action = ActionFactory()
    with django_capture_on_commit_callbacks() as callbacks:
        execution = services.create_execution(action, {"message": "hi"})
    assert execution.status == "scheduled" and execution.scheduled_at is not None
    assert Execution.objects.get(pk=execution.pk).status == "scheduled"
    assert callbacks  # the run message leaves after commit


def test_an_execution_under_a_policy_still_goes_through_admission():
    policy = PolicyFactory(threshold=1, on_limit="delay")
    first = services.create_execution(policy.action, {"message": "1"})
    second = services.create_execution(policy.action, {"message": "2"})
    assert first.status == "scheduled"
    assert Execution.objects.get(pk=second.pk).status == "delayed"


def test_claim_is_conditional_and_counts_the_attempt():
    action = ActionFactory()
    execution = services.create_execution(action, {"message": "hi"})
    claimed = executor.claim(execution.pk)
    assert claimed is not None and claimed.status == "running" and claimed.attempt == execution.attempt + 1
    assert claimed.started_at is not None
    assert {name: getattr(claimed, name) for name in FIELDS} == orm_values(Execution, execution.pk)
    assert executor.claim(execution.pk) is None  # a redelivered message finds it running


def test_claim_brings_the_action_on_postgresql(django_assert_num_queries):
    from django.db import connection

    action = ActionFactory()
    execution = services.create_execution(action, {"message": "hi"})
    claimed = executor.claim(execution.pk)
    if connection.vendor != "postgresql":
        assert "action" not in claimed._state.fields_cache  # SQLite: the executor reads it separately
        return
    with django_assert_num_queries(0):  # joined to the claim: no further read
        assert (claimed.action.pk, claimed.action.pack.ref, claimed.action.runner_type.name) == \
            (action.pk, action.pack.ref, action.runner_type.name)
    gone = services.create_execution(ActionFactory(), {"message": "x"})
    Action.objects.filter(pk=gone.action_id).delete()
    Execution.objects.filter(pk=gone.pk).update(action=None)
    claimed = executor.claim(gone.pk)
    assert claimed.action_id is None and claimed.action is None


def test_represent_is_the_serializer_output():
    action = ActionFactory()
    user = UserFactory()
    execution = services.create_execution(action, {"message": "hi"}, user=user)
    execution.children_ids = []
    assert ExecutionSerializer.represent(execution) == ExecutionSerializer(execution).data
    child = services.create_execution(action, {"message": "c"}, parent=execution)
    fresh = Execution.objects.get(pk=execution.pk)
    assert ExecutionSerializer.represent(fresh)["children"] == [child.pk]
    assert ExecutionSerializer.represent(fresh) == ExecutionSerializer(fresh).data


def test_jwt_user_read_checks_existence_and_activity():
    user = UserFactory()
    auth = JWTAuthentication()
    token = auth.get_validated_token(str(AccessToken.for_user(user)).encode())
    assert auth.get_user(token).pk == user.pk
    user.is_active = False
    user.save()
    with pytest.raises(AuthenticationFailed, match="inactive"):
        auth.get_user(token)
    user.delete()
    with pytest.raises(AuthenticationFailed, match="not found"):
        auth.get_user(token)


def test_run_messages_carry_the_reprs_celery_would_write():
    from celery.signals import before_task_publish
    from celery.utils.saferepr import saferepr

    from apps.triggers import services as trigger_services

    seen = []

    def capture(sender=None, headers=None, **kwargs):
        seen.append((sender, headers["argsrepr"], headers["kwargsrepr"]))

    before_task_publish.connect(capture, weak=False)
    try:
        services.dispatch(4242, "attune", inline=False)
        services.dispatch_many([(4243, "attune"), (4244, "attune")], inline=False)
        trigger_services.dispatch(77)
    finally:
        before_task_publish.disconnect(capture)
        from attune.celery import app as celery_app

        with celery_app.connection_for_write() as connection:  # no worker of a later test runs them
            for queue in ("attune", trigger_services.EVENTS_QUEUE):
                connection.default_channel.queue_purge(queue)
    assert seen == [
        (services.RUN_TASK, saferepr([4242]), saferepr({})),
        (services.RUN_TASK, saferepr([4243]), saferepr({})),
        (services.RUN_TASK, saferepr([4244]), saferepr({})),
        (trigger_services.PROCESS_EVENT_TASK, saferepr([77]), saferepr({})),
    ]
