"""The table of /api/v1/ resources the generic API tests run over.

Each resource names its URL prefix and a builder that creates ``n`` realistic rows (related objects filled
in, so a list that forgets a ``select_related``/``prefetch_related`` shows up in the query counts) and
returns their lookup values (ref, name, username or id, whatever the detail route is addressed by).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from apps.accounts.models import ApiToken, PermissionAssignment, PermissionSet
from apps.keys import services as key_services
from apps.keys.models import Key
from apps.packs.models import Runtime
from tests.factories import (
    ActionFactory,
    ArtifactFactory,
    EnforcementFactory,
    EventFactory,
    ExecutionFactory,
    InquiryFactory,
    KeyFactory,
    PackFactory,
    PermissionAssignmentFactory,
    PermissionSetFactory,
    PolicyFactory,
    RuleFactory,
    SensorFactory,
    TriggerFactory,
    UserFactory,
    WorkerFactory,
)

API = "/api/v1"

_counter = iter(range(10**9))


def _uid() -> int:
    return next(_counter)


def build_packs(n: int) -> list[str]:
    return [PackFactory().ref for _ in range(n)]


def build_runtimes(n: int) -> list[str]:
    return [Runtime.objects.create(name=f"rt{_uid()}", kind="shell", interpreter="/bin/sh").name for _ in range(n)]


def build_actions(n: int) -> list[str]:
    pack = PackFactory()
    return [ActionFactory(pack=pack).ref for _ in range(n)]


def build_triggers(n: int) -> list[str]:
    pack = PackFactory()
    return [TriggerFactory(pack=pack).ref for _ in range(n)]


def build_sensors(n: int) -> list[str]:
    pack = PackFactory()
    triggers = [TriggerFactory(pack=pack), TriggerFactory(pack=pack)]
    refs = []
    for _ in range(n):
        sensor = SensorFactory(pack=pack)
        sensor.trigger_types.set(triggers)
        refs.append(sensor.ref)
    return refs


def build_rules(n: int) -> list[str]:
    pack = PackFactory()
    owner = UserFactory()
    return [RuleFactory(pack=pack, owner=owner).ref for _ in range(n)]


def build_policies(n: int) -> list[str]:
    pack = PackFactory()
    action = ActionFactory(pack=pack)
    return [PolicyFactory(pack=pack, action=action).ref for _ in range(n)]


def build_keys(n: int) -> list[str]:
    creator = UserFactory()
    ids = []
    for i in range(n):
        if i % 2:
            key = Key(name=f"secret{_uid()}", scope="system", created_by=creator)
            key_services.apply_value(key, "s3cr3t", secret=True)
            key.save()
        else:
            key = KeyFactory(created_by=creator)
        ids.append(str(key.pk))
    return ids


def build_events(n: int) -> list[str]:
    trigger = TriggerFactory()
    return [str(EventFactory(trigger=trigger).pk) for _ in range(n)]


def build_enforcements(n: int) -> list[str]:
    rule = RuleFactory()
    ids = []
    for _ in range(n):
        execution = ExecutionFactory(action=rule.action, rule=rule)
        ids.append(str(EnforcementFactory(rule=rule, execution=execution).pk))
    return ids


def build_executions(n: int) -> list[str]:
    action = ActionFactory()
    user = UserFactory()
    worker = WorkerFactory()
    rule = RuleFactory(action=action, pack=action.pack)
    event = EventFactory(trigger=rule.trigger)
    ids = []
    for _ in range(n):
        parent = ExecutionFactory(
            action=action, started_by=user, worker=worker, rule=rule, trigger_event=event, status="running"
        )
        ExecutionFactory(action=action, parent=parent, started_by=user, status="succeeded")
        ids.append(str(parent.pk))
    return ids


def build_inquiries(n: int) -> list[str]:
    action = ActionFactory()
    responder = UserFactory()
    return [
        str(InquiryFactory(execution=ExecutionFactory(action=action, status="pending"), responded_by=responder,
                           assignees=["someone"], roles=["operator"]).pk)
        for _ in range(n)
    ]


def build_workers(n: int) -> list[str]:
    return [str(WorkerFactory().pk) for _ in range(n)]


def build_artifacts(n: int) -> list[str]:
    execution = ExecutionFactory()
    return [str(ArtifactFactory(execution=execution).pk) for _ in range(n)]


def build_identities(n: int) -> list[str]:
    viewer = PermissionSet.objects.get(name="viewer")
    names = []
    for _ in range(n):
        user = UserFactory()
        PermissionAssignment.objects.create(identity=user, permission_set=viewer)
        names.append(user.username)
    return names


def build_permission_sets(n: int) -> list[str]:
    return [PermissionSetFactory().name for _ in range(n)]


def build_permission_assignments(n: int) -> list[str]:
    return [str(PermissionAssignmentFactory().pk) for _ in range(n)]


def build_tokens(n: int) -> list[str]:
    owner = UserFactory(is_service_account=True)
    return [str(ApiToken.issue(owner, f"token {_uid()}")[0].pk) for _ in range(n)]


@dataclass(frozen=True)
class Resource:
    name: str  # URL segment under /api/v1/
    build: Callable[[int], list[str]]
    read_only: bool = False

    @property
    def list_url(self) -> str:
        return f"{API}/{self.name}/"

    def detail_url(self, lookup: str) -> str:
        return f"{API}/{self.name}/{lookup}/"

    def __str__(self) -> str:  # readable parametrize ids
        return self.name


RESOURCES = [
    Resource("packs", build_packs),
    Resource("runtimes", build_runtimes),
    Resource("actions", build_actions),
    Resource("triggers", build_triggers),
    Resource("sensors", build_sensors),
    Resource("rules", build_rules),
    Resource("policies", build_policies),
    Resource("keys", build_keys),
    Resource("events", build_events, read_only=True),
    Resource("enforcements", build_enforcements, read_only=True),
    Resource("executions", build_executions, read_only=True),
    Resource("inquiries", build_inquiries, read_only=True),
    Resource("workers", build_workers, read_only=True),
    Resource("artifacts", build_artifacts, read_only=True),
    Resource("identities", build_identities),
    Resource("permission-sets", build_permission_sets),
    Resource("permission-assignments", build_permission_assignments),
    Resource("auth/tokens", build_tokens),
]
RESOURCE_IDS = [r.name for r in RESOURCES]
READ_ONLY = [r for r in RESOURCES if r.read_only]
