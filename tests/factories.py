"""factory-boy factories for every model the tests create."""
from __future__ import annotations

import factory
from django.contrib.auth import get_user_model

from apps.accounts.models import PermissionAssignment, PermissionSet
from apps.actions.models import Action
from apps.executions.models import Artifact, Execution, Policy, Worker
from apps.inquiries.models import Inquiry
from apps.keys.models import Key
from apps.notifications.models import Notification
from apps.packs.models import Pack, Runtime
from apps.rules.models import Enforcement, Rule
from apps.triggers.models import Event, Sensor, Trigger
from apps.workflows.models import TaskExecution, WorkflowDefinition, WorkflowExecution


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda o: f"{o.username}@example.com")
    password = factory.PostGenerationMethodCall("set_password", "correct-horse-battery")

    @factory.post_generation
    def save_password(obj, create, extracted, **kwargs):
        if create:
            obj.save()


class PackFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Pack
        django_get_or_create = ("ref",)

    ref = factory.Sequence(lambda n: f"pack{n}")
    label = factory.LazyAttribute(lambda o: o.ref.title())
    description = "A test pack"
    version = "1.0.0"


def runtime(name: str = "shell") -> Runtime:
    """A built-in runtime. Migrations create them, but a transactional test's flush removes them."""
    from apps.packs.runtimes import sync_builtin_runtimes

    runtime = Runtime.objects.filter(name=name).first()
    if runtime is None:
        sync_builtin_runtimes()
        runtime = Runtime.objects.get(name=name)
    return runtime


class ActionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Action

    pack = factory.SubFactory(PackFactory)
    name = factory.Sequence(lambda n: f"action{n}")
    runner_type = factory.LazyFunction(lambda: runtime("shell"))
    entry_point = "run.sh"
    parameters = factory.LazyFunction(lambda: {"message": {"type": "string", "required": True}})


class TriggerFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Trigger

    pack = factory.SubFactory(PackFactory)
    name = factory.Sequence(lambda n: f"trigger{n}")
    payload_schema = factory.LazyFunction(lambda: {"type": "object"})


class SensorFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Sensor

    pack = factory.SubFactory(PackFactory)
    name = factory.Sequence(lambda n: f"sensor{n}")
    runner_type = factory.LazyFunction(lambda: runtime("python"))
    entry_point = "sensor.py"


class RuleFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Rule

    pack = factory.SubFactory(PackFactory)
    name = factory.Sequence(lambda n: f"rule{n}")
    trigger = factory.SubFactory(TriggerFactory, pack=factory.SelfAttribute("..pack"))
    action = factory.SubFactory(ActionFactory, pack=factory.SelfAttribute("..pack"))
    criteria = factory.LazyFunction(lambda: {"payload.severity": {"type": "equals", "pattern": "critical"}})
    action_params = factory.LazyFunction(lambda: {"message": "{{ payload.host }}"})


class PolicyFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Policy

    pack = factory.SubFactory(PackFactory)
    name = factory.Sequence(lambda n: f"policy{n}")
    action = factory.SubFactory(ActionFactory, pack=factory.SelfAttribute("..pack"))
    type = "concurrency"
    threshold = 1


class KeyFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Key

    name = factory.Sequence(lambda n: f"key{n}")
    scope = "system"
    value = factory.LazyFunction(lambda: {"answer": 42})


class EventFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Event

    trigger = factory.SubFactory(TriggerFactory)
    trigger_ref = factory.LazyAttribute(lambda o: o.trigger.ref)
    payload = factory.LazyFunction(lambda: {"severity": "critical", "host": "db-1"})


class ExecutionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Execution

    action = factory.SubFactory(ActionFactory)
    action_ref = factory.LazyAttribute(lambda o: o.action.ref)
    pack_ref = factory.LazyAttribute(lambda o: o.action.pack.ref)
    runner_type = factory.LazyAttribute(lambda o: o.action.runner_type_id)
    parameters = factory.LazyFunction(lambda: {"message": "hello"})


class EnforcementFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Enforcement

    rule = factory.SubFactory(RuleFactory)
    rule_ref = factory.LazyAttribute(lambda o: o.rule.ref)
    event = factory.SubFactory(EventFactory, trigger=factory.SelfAttribute("..rule.trigger"))
    status = "matched"


class WorkerFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Worker

    name = factory.Sequence(lambda n: f"host:{1000 + n}:w")
    hostname = "host"
    pid = factory.Sequence(lambda n: 1000 + n)
    queues = factory.LazyFunction(lambda: ["attune"])
    concurrency = 4


class InquiryFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Inquiry

    execution = factory.SubFactory(ExecutionFactory, status="pending")
    prompt = "Continue?"
    schema = factory.LazyFunction(lambda: {"type": "object", "properties": {"continue": {"type": "boolean"}}})


class ArtifactFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Artifact

    execution = factory.SubFactory(ExecutionFactory)
    name = factory.Sequence(lambda n: f"report{n}.txt")
    content_type = "text/plain"
    data = "report body"
    size = 11


class WorkflowDefinitionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = WorkflowDefinition

    action = factory.SubFactory(
        ActionFactory, runner_type=factory.LazyFunction(lambda: runtime("workflow")), entry_point="workflows/wf.yaml"
    )
    source = "version: 1.0\ntasks: []\n"
    definition = factory.LazyFunction(lambda: {"version": 1.0, "tasks": []})


class WorkflowExecutionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = WorkflowExecution

    execution = factory.SubFactory(ExecutionFactory, status="running")
    definition = factory.LazyFunction(lambda: {"version": 1.0, "tasks": [{"name": "a", "action": "core.noop"}]})


class TaskExecutionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = TaskExecution

    workflow_execution = factory.SubFactory(WorkflowExecutionFactory)
    task_name = "a"


class PermissionSetFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = PermissionSet

    name = factory.Sequence(lambda n: f"set{n}")
    grants = factory.LazyFunction(lambda: [{"resource": "packs", "actions": ["view"]}])


class PermissionAssignmentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = PermissionAssignment

    identity = factory.SubFactory(UserFactory)
    permission_set = factory.SubFactory(PermissionSetFactory)


class NotificationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Notification

    topic = "executions"
    type = "execution.status"
    payload = factory.LazyFunction(lambda: {"status": "running"})
