"""Who may call what: every route, every method, every role (SPEC §10, §11).

``MATRIX`` is the permission decision for each ``(route name, method)`` of ``/api/v1/``, and for each other
route of the site. It is checked both ways:

- ``test_every_route_has_a_permission_decision`` walks the URL configuration: a new API route (or a new
  method on one) that has no row here fails it, so no endpoint ships without a decision;
- ``test_endpoint_matrix`` calls each row as each role over HTTP and compares the outcome.

The target objects live in pack ``web``; ``pack_editor`` holds the built-in editor set limited to pack
``ops``, so for it ``web`` objects must be invisible (404, or missing from lists) and writes forbidden.

Outcomes: ``ok`` (2xx; for a list, the target is in it), ``filtered`` (200 without the target), ``401``,
``403``, ``404``, ``400`` (a create naming an object the caller may not see: "no such ..."), ``302``.
"""
from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import transaction
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import RefreshToken

from apps.accounts.audit import record
from apps.accounts.models import ApiToken, PermissionAssignment, PermissionSet
from apps.accounts.services import sync_builtin_sets
from apps.inquiries.models import DEFAULT_SCHEMA
from apps.keys import services as key_services
from apps.keys.models import Key
from apps.packs.models import Runtime
from apps.packs.runtimes import sync_builtin_runtimes
from apps.triggers import webhooks
from apps.workflows.language import normalize
from apps.workflows.models import WorkflowExecution
from tests.factories import (
    ActionFactory,
    ArtifactFactory,
    EnforcementFactory,
    EventFactory,
    ExecutionFactory,
    InquiryFactory,
    PackFactory,
    PolicyFactory,
    RuleFactory,
    SensorFactory,
    TriggerFactory,
    UserFactory,
    WorkerFactory,
)

pytestmark = pytest.mark.django_db

ROLES = ("anonymous", "viewer", "operator", "editor", "pack_editor", "admin")
PASSWORD = "correct-horse-battery"  # what UserFactory sets
NEW_PASSWORD = "Tr0ub4dor&3-staple"

# Rows used again and again, in ROLES order.
PUBLIC = "ok ok ok ok ok ok"
AUTHENTICATED = "401 ok ok ok ok ok"
LIST = "401 ok ok ok filtered ok"  # a pack-scoped list: the pack editor does not see web's rows
READ = "401 ok ok ok 404 ok"  # a web object
GLOBAL_READ = "401 ok ok ok ok ok"  # runtimes, workers: not in any pack
CREATE = "401 403 403 ok 403 ok"  # configuration in pack web
WRITE = "401 403 403 ok 404 ok"  # change or delete a web configuration object
RUN = "401 403 ok ok 404 ok"  # execute, cancel, re-run, answer: operators and up
ADMIN_ONLY = "401 403 403 403 403 ok"
SUPERUSER_ONLY = ADMIN_ONLY


@dataclass(frozen=True)
class Call:
    """One request. ``url`` and string bodies are formatted with the world's ids and ``role``; ``body`` may also
    be a function ``(world, role) -> body``; ``find`` (``"field=value"``) names the target row of a list."""

    url: str
    body: Any = None
    multipart: bool = False
    find: str | None = None
    settings: tuple[tuple[str, Any], ...] = ()


def row(call: Call, outcomes: str) -> tuple[Call, dict[str, str]]:
    codes = outcomes.split()
    assert len(codes) == len(ROLES), outcomes
    return call, dict(zip(ROLES, codes))


def _targz(ref: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        data = f"ref: {ref}\nversion: 1.0.0\n".encode()
        info = tarfile.TarInfo("pack.yaml")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _install_body(world, role):
    ref = f"inst_{role}"
    return {"file": SimpleUploadedFile(f"{ref}.tar.gz", _targz(ref), content_type="application/gzip")}


def _login_body(world, role):
    return {"username": world.usernames.get(role, "victim"), "password": PASSWORD}


def _refresh_body(world, role):
    return {"refresh": str(RefreshToken.for_user(world.victim))}


def _register_body(world, role):
    return {"username": f"new-{role}", "password": NEW_PASSWORD}


def _change_password_body(world, role):
    return {"old_password": PASSWORD, "new_password": NEW_PASSWORD}


V1 = "/api/v1"
ACTION = {"pack": "web", "name": "spare", "runner_type": "noop", "entry_point": ""}
SENSOR = {"pack": "web", "name": "watch", "runner_type": "python", "entry_point": "watch.py",
          "trigger_types": ["web.alert"]}
RULE = {"pack": "web", "name": "on_hook", "trigger": "web.hook", "action": "web.deploy"}
POLICY = {"pack": "web", "name": "limit", "action": "web.deploy", "type": "concurrency", "threshold": 2}
KEY = {"name": "token", "scope": "pack", "owner": "web", "value": "rotated", "secret": True}
GRANTS = [{"resource": "packs", "actions": ["view"]}]
WORKFLOW = {"version": 1.0, "tasks": [{"name": "deploy", "action": "web.deploy"}]}

MATRIX: dict[tuple[str, str], tuple[Call, dict[str, str]]] = {
    # --- the site outside /api/v1/ (checked by route name only) ----------------------------------------------
    ("/", "GET"): row(Call("/"), "302 302 302 302 302 302"),
    ("schema", "GET"): row(Call("/api/schema/"), PUBLIC),
    ("swagger-ui", "GET"): row(Call("/docs/"), PUBLIC),
    ("health-live", "GET"): row(Call("/health/live"), PUBLIC),
    ("health-ready", "GET"): row(Call("/health/ready"), PUBLIC),
    ("health", "GET"): row(Call("/health/"), PUBLIC),
    ("login", "GET"): row(Call("/api-auth/login/"), PUBLIC),
    ("logout", "POST"): row(Call("/api-auth/logout/"), PUBLIC),
    # --- no login: webhooks authenticate by their key; the auth endpoints ------------------------------------
    ("api-root", "GET"): row(Call(f"{V1}/"), AUTHENTICATED),
    ("webhook-receive", "POST"): row(Call(f"{V1}/webhooks/{{webhook_key}}", {"host": "db-1"}), PUBLIC),
    ("auth-login", "POST"): row(Call(f"{V1}/auth/login", _login_body), PUBLIC),
    ("auth-refresh", "POST"): row(Call(f"{V1}/auth/refresh", _refresh_body), PUBLIC),
    ("auth-register", "POST"): row(Call(f"{V1}/auth/register", _register_body,
                                        settings=(("ATTUNE_ALLOW_REGISTRATION", True),)), PUBLIC),
    ("auth-me", "GET"): row(Call(f"{V1}/auth/me"), AUTHENTICATED),
    ("auth-me", "PATCH"): row(Call(f"{V1}/auth/me", {"first_name": "Changed"}), AUTHENTICATED),
    ("auth-change-password", "POST"): row(Call(f"{V1}/auth/change-password", _change_password_body), AUTHENTICATED),
    # Everyone manages their own tokens (the target is the caller's own token).
    ("api-token-list", "GET"): row(Call(f"{V1}/auth/tokens", find="id={token}"), AUTHENTICATED),
    ("api-token-list", "POST"): row(Call(f"{V1}/auth/tokens", {"name": "new"}), AUTHENTICATED),
    ("api-token-detail", "GET"): row(Call(f"{V1}/auth/tokens/{{token}}"), AUTHENTICATED),
    ("api-token-detail", "DELETE"): row(Call(f"{V1}/auth/tokens/{{token}}"), AUTHENTICATED),
    # --- packs -------------------------------------------------------------------------------------------------
    ("pack-list", "GET"): row(Call(f"{V1}/packs", find="ref=web"), LIST),
    ("pack-list", "POST"): row(Call(f"{V1}/packs", {"ref": "fresh", "version": "1.0.0"}), CREATE),
    ("pack-install", "POST"): row(Call(f"{V1}/packs/install", _install_body, multipart=True), CREATE),
    ("pack-register", "POST"): row(Call(f"{V1}/packs/register", {"path": "{fresh_dir}"}), SUPERUSER_ONLY),
    ("pack-detail", "GET"): row(Call(f"{V1}/packs/web"), READ),
    ("pack-detail", "PUT"): row(Call(f"{V1}/packs/web", {"ref": "web", "version": "2.0.0"}), WRITE),
    ("pack-detail", "PATCH"): row(Call(f"{V1}/packs/web", {"label": "Changed"}), WRITE),
    ("pack-detail", "DELETE"): row(Call(f"{V1}/packs/web"), WRITE),
    ("pack-actions", "GET"): row(Call(f"{V1}/packs/web/actions", find="ref=web.deploy"), READ),
    ("pack-config", "GET"): row(Call(f"{V1}/packs/web/config"), READ),
    ("pack-config", "PUT"): row(Call(f"{V1}/packs/web/config", {"config": {}}), WRITE),
    ("pack-policies", "GET"): row(Call(f"{V1}/packs/web/policies", find="ref=web.limit"), READ),
    ("pack-rules", "GET"): row(Call(f"{V1}/packs/web/rules", find="ref=web.on_hook"), READ),
    ("pack-sensors", "GET"): row(Call(f"{V1}/packs/web/sensors", find="ref=web.watch"), READ),
    ("pack-triggers", "GET"): row(Call(f"{V1}/packs/web/triggers", find="ref=web.hook"), READ),
    ("pack-workflows", "GET"): row(Call(f"{V1}/packs/web/workflows"), READ),
    # --- runtimes: global; only admins change them -------------------------------------------------------------
    ("runtime-list", "GET"): row(Call(f"{V1}/runtimes", find="name=rt-custom"), GLOBAL_READ),
    ("runtime-list", "POST"): row(Call(f"{V1}/runtimes", {"name": "ruby", "kind": "shell"}), ADMIN_ONLY),
    ("runtime-detail", "GET"): row(Call(f"{V1}/runtimes/rt-custom"), GLOBAL_READ),
    ("runtime-detail", "PUT"): row(Call(f"{V1}/runtimes/rt-custom", {"name": "rt-custom", "kind": "shell",
                                                                     "interpreter": "/bin/bash"}), ADMIN_ONLY),
    ("runtime-detail", "PATCH"): row(Call(f"{V1}/runtimes/rt-custom", {"enabled": False}), ADMIN_ONLY),
    ("runtime-detail", "DELETE"): row(Call(f"{V1}/runtimes/rt-custom"), ADMIN_ONLY),
    # --- actions -----------------------------------------------------------------------------------------------
    ("action-list", "GET"): row(Call(f"{V1}/actions", find="ref=web.deploy"), LIST),
    ("action-list", "POST"): row(Call(f"{V1}/actions", {**ACTION, "name": "new"}), CREATE),
    ("action-detail", "GET"): row(Call(f"{V1}/actions/web.spare"), READ),
    ("action-detail", "PUT"): row(Call(f"{V1}/actions/web.spare", {**ACTION, "timeout": 30}), WRITE),
    ("action-detail", "PATCH"): row(Call(f"{V1}/actions/web.spare", {"description": "x"}), WRITE),
    ("action-detail", "DELETE"): row(Call(f"{V1}/actions/web.spare"), WRITE),
    ("action-operation-execute", "POST"): row(Call(f"{V1}/actions/web.deploy/execute", {"parameters": {}}), RUN),
    ("action-operation-queue-stats", "GET"): row(Call(f"{V1}/actions/web.deploy/queue-stats"), READ),
    # --- triggers and their webhooks ---------------------------------------------------------------------------
    ("trigger-list", "GET"): row(Call(f"{V1}/triggers", find="ref=web.hook"), LIST),
    ("trigger-list", "POST"): row(Call(f"{V1}/triggers", {"pack": "web", "name": "new"}), CREATE),
    ("trigger-detail", "GET"): row(Call(f"{V1}/triggers/web.alert"), READ),
    ("trigger-detail", "PUT"): row(Call(f"{V1}/triggers/web.alert", {"pack": "web", "name": "alert"}), WRITE),
    ("trigger-detail", "PATCH"): row(Call(f"{V1}/triggers/web.alert", {"description": "x"}), WRITE),
    ("trigger-detail", "DELETE"): row(Call(f"{V1}/triggers/web.alert"), WRITE),
    ("trigger-enable", "POST"): row(Call(f"{V1}/triggers/web.hook/enable"), WRITE),
    ("trigger-disable", "POST"): row(Call(f"{V1}/triggers/web.hook/disable"), WRITE),
    ("trigger-webhook-enable", "POST"): row(Call(f"{V1}/triggers/web.alert/webhook/enable", {}), WRITE),
    ("trigger-webhook-regenerate", "POST"): row(Call(f"{V1}/triggers/web.hook/webhook/regenerate"), WRITE),
    ("trigger-webhook-disable", "POST"): row(Call(f"{V1}/triggers/web.hook/webhook/disable"), WRITE),
    # --- sensors -----------------------------------------------------------------------------------------------
    ("sensor-list", "GET"): row(Call(f"{V1}/sensors", find="ref=web.watch"), LIST),
    ("sensor-list", "POST"): row(Call(f"{V1}/sensors", {**SENSOR, "name": "new"}), CREATE),
    ("sensor-detail", "GET"): row(Call(f"{V1}/sensors/web.watch"), READ),
    ("sensor-detail", "PUT"): row(Call(f"{V1}/sensors/web.watch", {**SENSOR, "mode": "poll", "poll_interval": 60}),
                                  WRITE),
    ("sensor-detail", "PATCH"): row(Call(f"{V1}/sensors/web.watch", {"description": "x"}), WRITE),
    ("sensor-detail", "DELETE"): row(Call(f"{V1}/sensors/web.watch"), WRITE),
    ("sensor-enable", "POST"): row(Call(f"{V1}/sensors/web.watch/enable"), WRITE),
    ("sensor-disable", "POST"): row(Call(f"{V1}/sensors/web.watch/disable"), WRITE),
    ("sensor-status", "GET"): row(Call(f"{V1}/sensors/web.watch/status"), READ),
    # --- rules -------------------------------------------------------------------------------------------------
    ("rule-list", "GET"): row(Call(f"{V1}/rules", find="ref=web.on_hook"), LIST),
    ("rule-list", "POST"): row(Call(f"{V1}/rules", {**RULE, "name": "new"}), CREATE),
    ("rule-test", "POST"): row(Call(f"{V1}/rules/test", {"rule": "web.on_hook", "payload": {}}),
                               "401 ok ok ok 400 ok"),
    ("rule-detail", "GET"): row(Call(f"{V1}/rules/web.on_hook"), READ),
    ("rule-detail", "PUT"): row(Call(f"{V1}/rules/web.on_hook", {**RULE, "enabled": False}), WRITE),
    ("rule-detail", "PATCH"): row(Call(f"{V1}/rules/web.on_hook", {"description": "x"}), WRITE),
    ("rule-detail", "DELETE"): row(Call(f"{V1}/rules/web.on_hook"), WRITE),
    ("rule-enable", "POST"): row(Call(f"{V1}/rules/web.on_hook/enable"), WRITE),
    ("rule-disable", "POST"): row(Call(f"{V1}/rules/web.on_hook/disable"), WRITE),
    # --- policies ----------------------------------------------------------------------------------------------
    ("policy-list", "GET"): row(Call(f"{V1}/policies", find="ref=web.limit"), LIST),
    ("policy-list", "POST"): row(Call(f"{V1}/policies", {**POLICY, "name": "new"}), CREATE),
    ("policy-detail", "GET"): row(Call(f"{V1}/policies/web.limit"), READ),
    ("policy-detail", "PUT"): row(Call(f"{V1}/policies/web.limit", POLICY), WRITE),
    ("policy-detail", "PATCH"): row(Call(f"{V1}/policies/web.limit", {"threshold": 3}), WRITE),
    ("policy-detail", "DELETE"): row(Call(f"{V1}/policies/web.limit"), WRITE),
    # --- keys (the target is web's secret key; reading it shows it redacted) ---------------------------------
    ("key-list", "GET"): row(Call(f"{V1}/keys", find="id={key}"), LIST),
    ("key-list", "POST"): row(Call(f"{V1}/keys", {**KEY, "name": "new"}), CREATE),
    ("key-detail", "GET"): row(Call(f"{V1}/keys/{{key}}"), READ),
    ("key-detail", "PUT"): row(Call(f"{V1}/keys/{{key}}", KEY), WRITE),
    ("key-detail", "PATCH"): row(Call(f"{V1}/keys/{{key}}", {"value": "rotated"}), WRITE),
    ("key-detail", "DELETE"): row(Call(f"{V1}/keys/{{key}}"), WRITE),
    # --- events and enforcements -------------------------------------------------------------------------------
    ("event-list", "GET"): row(Call(f"{V1}/events", find="id={event}"), LIST),
    ("event-list", "POST"): row(Call(f"{V1}/events", {"trigger": "web.hook", "payload": {}}), "401 403 ok ok 400 ok"),
    ("event-detail", "GET"): row(Call(f"{V1}/events/{{event}}"), READ),
    ("event-re-emit", "POST"): row(Call(f"{V1}/events/{{event}}/re-emit"), RUN),
    ("enforcement-list", "GET"): row(Call(f"{V1}/enforcements", find="id={enforcement}"), LIST),
    ("enforcement-detail", "GET"): row(Call(f"{V1}/enforcements/{{enforcement}}"), READ),
    # --- executions --------------------------------------------------------------------------------------------
    ("execution-list", "GET"): row(Call(f"{V1}/executions", find="id={execution}"), LIST),
    ("execution-list", "POST"): row(Call(f"{V1}/executions", {"action": "web.deploy", "parameters": {}}),
                                    "401 403 ok ok 400 ok"),
    ("execution-stats", "GET"): row(Call(f"{V1}/executions/stats"), AUTHENTICATED),
    ("execution-detail", "GET"): row(Call(f"{V1}/executions/{{execution}}"), READ),
    ("execution-cancel", "POST"): row(Call(f"{V1}/executions/{{execution}}/cancel"), RUN),
    ("execution-children", "GET"): row(Call(f"{V1}/executions/{{execution}}/children", find="id={child}"), READ),
    ("execution-output", "GET"): row(Call(f"{V1}/executions/{{execution}}/output"), READ),
    ("execution-rerun", "POST"): row(Call(f"{V1}/executions/{{execution}}/rerun", {}), RUN),
    ("execution-trace", "GET"): row(Call(f"{V1}/executions/{{execution}}/trace"), READ),
    # workflows: pausing and resuming need the cancel grant (operators); the graph and state are reads
    ("execution-pause", "POST"): row(Call(f"{V1}/executions/{{workflow_running}}/pause"), RUN),
    ("execution-resume", "POST"): row(Call(f"{V1}/executions/{{workflow_paused}}/resume"), RUN),
    ("execution-graph", "GET"): row(Call(f"{V1}/executions/{{workflow_running}}/graph"), READ),
    ("execution-tasks", "GET"): row(Call(f"{V1}/executions/{{workflow_running}}/tasks"), READ),
    ("execution-context", "GET"): row(Call(f"{V1}/executions/{{workflow_running}}/context"), READ),
    ("workflow-validate", "POST"): row(Call(f"{V1}/workflows/validate", {"definition": WORKFLOW}), AUTHENTICATED),
    # --- inquiries ---------------------------------------------------------------------------------------------
    ("inquiry-list", "GET"): row(Call(f"{V1}/inquiries", find="id={inquiry}"), LIST),
    ("inquiry-detail", "GET"): row(Call(f"{V1}/inquiries/{{inquiry}}"), READ),
    ("inquiry-respond", "POST"): row(Call(f"{V1}/inquiries/{{inquiry}}/respond", {"response": {"continue": True}}),
                                     RUN),
    # --- workers and artifacts ---------------------------------------------------------------------------------
    ("worker-list", "GET"): row(Call(f"{V1}/workers", find="id={worker}"), GLOBAL_READ),
    ("worker-detail", "GET"): row(Call(f"{V1}/workers/{{worker}}"), GLOBAL_READ),
    ("artifact-list", "GET"): row(Call(f"{V1}/artifacts", find="id={artifact}"), LIST),
    ("artifact-detail", "GET"): row(Call(f"{V1}/artifacts/{{artifact}}"), READ),
    # --- identities, permission sets, assignments, audit: admins only ------------------------------------------
    ("identity-list", "GET"): row(Call(f"{V1}/identities", find="username=victim"), ADMIN_ONLY),
    ("identity-list", "POST"): row(Call(f"{V1}/identities", {"username": "newbie", "password": NEW_PASSWORD}),
                                   ADMIN_ONLY),
    ("identity-detail", "GET"): row(Call(f"{V1}/identities/victim"), ADMIN_ONLY),
    ("identity-detail", "PUT"): row(Call(f"{V1}/identities/victim", {"username": "victim", "email": "v@x.org"}),
                                    ADMIN_ONLY),
    ("identity-detail", "PATCH"): row(Call(f"{V1}/identities/victim", {"first_name": "V"}), ADMIN_ONLY),
    ("identity-detail", "DELETE"): row(Call(f"{V1}/identities/victim"), ADMIN_ONLY),
    ("permission-set-list", "GET"): row(Call(f"{V1}/permission-sets", find="name=custom"), ADMIN_ONLY),
    ("permission-set-list", "POST"): row(Call(f"{V1}/permission-sets", {"name": "new", "grants": GRANTS}),
                                         ADMIN_ONLY),
    ("permission-set-detail", "GET"): row(Call(f"{V1}/permission-sets/custom"), ADMIN_ONLY),
    ("permission-set-detail", "PUT"): row(Call(f"{V1}/permission-sets/custom", {"name": "custom", "grants": GRANTS}),
                                          ADMIN_ONLY),
    ("permission-set-detail", "PATCH"): row(Call(f"{V1}/permission-sets/custom", {"description": "x"}), ADMIN_ONLY),
    ("permission-set-detail", "DELETE"): row(Call(f"{V1}/permission-sets/custom"), ADMIN_ONLY),
    ("permission-assignment-list", "GET"): row(Call(f"{V1}/permission-assignments", find="id={assignment}"),
                                               ADMIN_ONLY),
    ("permission-assignment-list", "POST"): row(
        Call(f"{V1}/permission-assignments", {"identity": "victim", "permission_set": "operator"}), ADMIN_ONLY),
    ("permission-assignment-detail", "GET"): row(Call(f"{V1}/permission-assignments/{{assignment}}"), ADMIN_ONLY),
    ("permission-assignment-detail", "PUT"): row(
        Call(f"{V1}/permission-assignments/{{assignment}}", {"identity": "victim", "permission_set": "operator"}),
        ADMIN_ONLY),
    ("permission-assignment-detail", "PATCH"): row(
        Call(f"{V1}/permission-assignments/{{assignment}}", {"packs": ["web"]}), ADMIN_ONLY),
    ("permission-assignment-detail", "DELETE"): row(Call(f"{V1}/permission-assignments/{{assignment}}"), ADMIN_ONLY),
    ("audit-event-list", "GET"): row(Call(f"{V1}/audit", find="id={audit_event}"), ADMIN_ONLY),
    ("audit-event-detail", "GET"): row(Call(f"{V1}/audit/{{audit_event}}"), ADMIN_ONLY),
}


# --- the URL configuration ------------------------------------------------------------------------------------

HTTP_METHODS = ("get", "post", "put", "patch", "delete")


def _walk(patterns, prefix: str = ""):
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            yield from _walk(pattern.url_patterns, prefix + str(pattern.pattern))
        elif isinstance(pattern, URLPattern):
            yield prefix + str(pattern.pattern), pattern


def _methods(callback) -> set[str]:
    actions = getattr(callback, "actions", None)
    if actions:  # a DRF viewset route: the mapped methods (HEAD, which DRF adds once called, is GET's)
        return {method.upper() for method in actions if method in HTTP_METHODS}
    view_class = getattr(callback, "cls", None) or getattr(callback, "view_class", None)
    if view_class is not None:
        return {m.upper() for m in HTTP_METHODS if hasattr(view_class, m) and m in view_class.http_method_names}
    return {"*"}  # a function view: whatever the table says


def api_routes() -> dict[str, set[str]]:
    """``route name -> methods`` of every route under /api/v1/."""
    routes: dict[str, set[str]] = {}
    for path, pattern in _walk(get_resolver().url_patterns):
        if path.startswith("api/v1/"):
            assert pattern.name, f"unnamed API route {path}: name it, so the matrix can list it"
            routes.setdefault(pattern.name, set()).update(_methods(pattern.callback))
    return routes


def other_routes() -> set[str]:
    """Names (or, unnamed, the pattern) of the routes outside /api/v1/, the admin and static files."""
    names = set()
    for path, pattern in _walk(get_resolver().url_patterns):
        if not path.startswith(("api/v1/", "admin/", "^static/")):
            names.add(pattern.name or f"/{path}")
    return names


def undecided_routes() -> list[str]:
    """Routes (API: route and method) that have no row in MATRIX, and rows for routes that do not exist."""
    api = api_routes()
    listed: dict[str, set[str]] = {}
    for name, method in MATRIX:
        listed.setdefault(name, set()).add(method)
    problems = sorted(f"no decision: {name} {method}" for name, methods in api.items() for method in methods
                      if method != "*" and method not in listed.get(name, set()))
    problems += sorted(f"no decision: {name} (any method)" for name, methods in api.items()
                       if "*" in methods and name not in listed)
    others = other_routes()
    problems += sorted(f"no decision: {name}" for name in others - set(listed))
    problems += sorted(f"stale row: {name} {method}" for name, methods in listed.items() for method in methods
                       if (name not in others and name not in api)
                       or (name in api and "*" not in api[name] and method not in api[name]))
    return problems


def test_every_route_has_a_permission_decision():
    assert len(api_routes()) > 60  # the walk found the API
    problems = undecided_routes()
    assert not problems, ("every route needs a permission decision in MATRIX (a row per role; then make the endpoint "
                          f"match it): {problems}")


def test_a_new_route_without_a_decision_is_caught(settings):
    """The check above is not vacuous: an API route nobody decided on shows up in it."""
    import sys
    import types

    from django.urls import clear_url_caches, path
    from rest_framework.decorators import api_view

    @api_view(["GET", "POST"])
    def shiny(request):  # pragma: no cover - never called
        raise AssertionError

    module = types.ModuleType("matrix_test_urls")
    module.urlpatterns = [*get_resolver().url_patterns, path("api/v1/shiny/", shiny, name="shiny-new")]
    sys.modules[module.__name__] = module
    settings.ROOT_URLCONF = module.__name__
    try:
        assert {"no decision: shiny-new GET", "no decision: shiny-new POST"} <= set(undecided_routes())
    finally:
        del sys.modules[module.__name__]
        clear_url_caches()


# --- the world every row runs against ---------------------------------------------------------------------------

def _role_user(role: str, packs=None, **extra):
    user = UserFactory(username=f"{role}-user", **extra)
    if role in ("viewer", "operator", "editor", "pack_editor"):
        set_name = "editor" if role == "pack_editor" else role
        PermissionAssignment.objects.create(identity=user, permission_set=PermissionSet.objects.get(name=set_name),
                                            packs=packs)
    return user


def build_world(tmp_path) -> SimpleNamespace:
    sync_builtin_sets()
    sync_builtin_runtimes()
    users = {
        "viewer": _role_user("viewer"),
        "operator": _role_user("operator"),
        "editor": _role_user("editor"),
        "pack_editor": _role_user("pack_editor", packs=["ops"]),
        "admin": _role_user("admin", is_staff=True, is_superuser=True),
    }
    noop = Runtime.objects.get(name="noop")
    web, ops = PackFactory(ref="web"), PackFactory(ref="ops")
    deploy = ActionFactory(pack=web, name="deploy", runner_type=noop, entry_point="", parameters={})
    ActionFactory(pack=web, name="spare", runner_type=noop, entry_point="", parameters={})
    ActionFactory(pack=ops, name="restart", runner_type=noop, entry_point="", parameters={})
    hook = TriggerFactory(pack=web, name="hook")
    alert = TriggerFactory(pack=web, name="alert")
    _webhook, issued = webhooks.enable(hook, {})
    SensorFactory(pack=web, name="watch").trigger_types.set([alert])
    rule = RuleFactory(pack=web, name="on_hook", trigger=hook, action=deploy, criteria={}, action_params={})
    PolicyFactory(pack=web, name="limit", action=deploy)
    key = Key(scope="pack", owner="web", name="token")
    key_services.apply_value(key, "s3cr3t-value", secret=True)
    key.save()
    event = EventFactory(trigger=hook)
    execution = ExecutionFactory(action=deploy, status="running", parameters={}, started_by=users["operator"])
    child = ExecutionFactory(action=deploy, parent=execution, status="succeeded", parameters={})
    enforcement = EnforcementFactory(rule=rule, event=event, execution=execution)
    inquiry = InquiryFactory(execution=ExecutionFactory(action=deploy, status="pending", parameters={}),
                             schema=DEFAULT_SCHEMA)
    flow = ActionFactory(pack=web, name="flow", runner_type=Runtime.objects.get(name="workflow"),
                         entry_point="workflows/flow.yaml", parameters={})
    workflows = {}
    for status in ("running", "paused"):
        run = ExecutionFactory(action=flow, status=status, parameters={}, runner_type="workflow")
        WorkflowExecution.objects.create(execution=run, definition=normalize(WORKFLOW))
        workflows[f"workflow_{status}"] = run.pk
    victim = UserFactory(username="victim")
    assignment = PermissionAssignment.objects.create(identity=victim,
                                                     permission_set=PermissionSet.objects.get(name="viewer"))
    PermissionSet.objects.create(name="custom", grants=GRANTS)
    Runtime.objects.create(name="rt-custom", kind="shell", interpreter="/bin/sh")
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "pack.yaml").write_text("ref: fresh\nversion: 1.0.0\n")
    return SimpleNamespace(
        users=users,
        usernames={role: user.username for role, user in users.items()},
        victim=victim,
        tokens={role: ApiToken.issue(user, "mine")[0].pk for role, user in users.items()},
        ids={
            "webhook_key": issued.key,
            "fresh_dir": str(fresh),
            "key": key.pk,
            "event": event.pk,
            "enforcement": enforcement.pk,
            "execution": execution.pk,
            "child": child.pk,
            "inquiry": inquiry.pk,
            "worker": WorkerFactory().pk,
            "artifact": ArtifactFactory(execution=execution).pk,
            "assignment": assignment.pk,
            "audit_event": record(None, "login_failed", actor_name="mallory").pk,
            **workflows,
        },
    )


def _format(value: Any, values: dict) -> Any:
    if isinstance(value, str):
        return value.format(**values)
    if isinstance(value, dict):
        return {k: _format(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [_format(v, values) for v in value]
    return value


def call(world, role: str, method: str, spec: Call):
    client = APIClient()
    if role != "anonymous":
        client.force_authenticate(world.users[role])
    values = {**world.ids, "role": role, "token": world.tokens.get(role, 0)}
    body = spec.body(world, role) if callable(spec.body) else _format(spec.body, values)
    kwargs: dict[str, Any] = {}
    if body is not None:
        kwargs = {"data": body, "format": "multipart" if spec.multipart else "json"}
    return getattr(client, method.lower())(_format(spec.url, values), **kwargs)


def outcome(response, spec: Call, world, role: str) -> str:
    code = response.status_code
    if 200 <= code < 300 and spec.find is not None:
        field, _, wanted = spec.find.partition("=")
        wanted = wanted.format(**world.ids, token=world.tokens.get(role, 0))
        results = response.json()["results"]
        return "ok" if any(str(item.get(field)) == wanted for item in results) else "filtered"
    return "ok" if 200 <= code < 300 else str(code)


@pytest.mark.parametrize(("route", "method"), sorted(MATRIX), ids=[f"{r} {m}" for r, m in sorted(MATRIX)])
def test_endpoint_matrix(route, method, tmp_path, settings):
    settings.ATTUNE_HOME = tmp_path / "home"
    settings.ATTUNE_HOME.mkdir()
    spec, expected = MATRIX[(route, method)]
    for name, value in spec.settings:
        setattr(settings, name, value)
    world = build_world(tmp_path)
    mismatches = []
    for role in ROLES:
        with transaction.atomic():  # every role starts from the same world
            response = call(world, role, method, spec)
            got = outcome(response, spec, world, role)
            transaction.set_rollback(True)
        if got != expected[role]:
            mismatches.append(f"{role}: expected {expected[role]}, got {got} "
                              f"({response.status_code} {response.content[:200]!r})")
    assert not mismatches, f"{method} {spec.url}:\n  " + "\n  ".join(mismatches)


# --- the admin ----------------------------------------------------------------------------------------------------

def admin_urls() -> list[str]:
    """Every admin page, with ``1`` for each captured argument."""
    import re

    urls = []
    for path, _pattern in _walk(get_resolver().url_patterns):
        if not path.startswith("admin/"):
            continue
        url = "/" + re.sub(r"<(?:\w+:)?\w+>", "1", path)
        url = re.sub(r"\(\?P<\w+>[^)]*\)", "1", url).replace("^", "").replace("$", "")
        urls.append(url)
    return sorted(set(urls))


def test_non_staff_users_cannot_use_the_admin(tmp_path):
    world = build_world(tmp_path)
    urls = admin_urls()
    assert len(urls) > 50 and "/admin/accounts/auditevent/" in urls
    for role, user in world.users.items():
        if user.is_staff:
            continue
        client = Client()
        client.force_login(user)
        for url in urls:
            if url.startswith(("/admin/login/", "/admin/logout/")):  # logging out is harmless
                continue
            response = client.get(url)
            assert response.status_code == 302, (role, url, response.status_code)
            assert response["Location"].startswith("/admin/login/"), (role, url, response["Location"])
    anonymous = Client().get("/admin/accounts/auditevent/")
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/admin/login/")
    staff = Client()
    staff.force_login(world.users["admin"])
    assert staff.get("/admin/").status_code == 200
    assert staff.get("/admin/accounts/auditevent/").status_code == 200


def test_a_staff_user_without_model_permissions_sees_nothing_in_the_admin(tmp_path):
    build_world(tmp_path)
    clerk = UserFactory(username="clerk", is_staff=True)
    client = Client()
    client.force_login(clerk)
    assert client.get("/admin/accounts/user/").status_code == 403
    assert client.get("/admin/keys/key/").status_code == 403
    assert client.get("/admin/accounts/auditevent/").status_code == 403


# --- acceptance, over HTTP ----------------------------------------------------------------------------------------

def client_as(world, role: str) -> APIClient:
    client = APIClient()
    client.force_authenticate(world.users[role])
    return client


def test_a_viewer_cannot_execute_edit_or_decrypt(tmp_path):
    world = build_world(tmp_path)
    viewer = client_as(world, "viewer")
    assert viewer.post(f"{V1}/actions/web.deploy/execute", {"parameters": {}}, format="json").status_code == 403
    assert viewer.post(f"{V1}/executions", {"action": "web.deploy"}, format="json").status_code == 403
    assert viewer.patch(f"{V1}/actions/web.deploy", {"timeout": 5}, format="json").status_code == 403
    assert viewer.patch(f"{V1}/packs/web", {"label": "x"}, format="json").status_code == 403
    assert viewer.get(f"{V1}/keys/{world.ids['key']}").json()["value"] == "********"
    refused = viewer.get(f"{V1}/keys/{world.ids['key']}?decrypt=true")
    assert refused.status_code == 403 and "s3cr3t-value" not in refused.content.decode()
    assert viewer.get(f"{V1}/keys?decrypt=true").status_code == 403
    assert viewer.get(f"{V1}/packs/web/config?decrypt=true").status_code == 403
    assert not world.victim.__class__.objects.get(pk=world.users["viewer"].pk).executions.exists()


def test_an_operator_executes_and_answers_but_does_not_edit(tmp_path):
    world = build_world(tmp_path)
    operator = client_as(world, "operator")
    assert operator.post(f"{V1}/actions/web.deploy/execute", {"parameters": {}}, format="json").status_code == 201
    answered = operator.post(f"{V1}/inquiries/{world.ids['inquiry']}/respond", {"response": {"continue": True}},
                             format="json")
    assert answered.status_code == 200 and answered.json()["responded_by"] == "operator-user"
    assert operator.post(f"{V1}/packs", {"ref": "mine", "version": "1.0.0"}, format="json").status_code == 403
    assert operator.patch(f"{V1}/packs/web", {"label": "x"}, format="json").status_code == 403
    assert operator.delete(f"{V1}/packs/web").status_code == 403
    assert operator.put(f"{V1}/packs/web/config", {"config": {}}, format="json").status_code == 403
    assert operator.patch(f"{V1}/actions/web.deploy", {"timeout": 5}, format="json").status_code == 403
    assert operator.get(f"{V1}/keys/{world.ids['key']}?decrypt=true").status_code == 403


def test_a_pack_limited_editor_cannot_touch_another_pack(tmp_path):
    world = build_world(tmp_path)
    editor = client_as(world, "pack_editor")
    # its own pack: full editor rights
    assert editor.patch(f"{V1}/actions/ops.restart", {"timeout": 5}, format="json").status_code == 200
    assert editor.post(f"{V1}/actions", {**ACTION, "pack": "ops"}, format="json").status_code == 201
    assert editor.post(f"{V1}/keys", {"name": "k", "scope": "pack", "owner": "ops", "value": 1},
                       format="json").status_code == 201
    assert editor.post(f"{V1}/actions/ops.restart/execute", {"parameters": {}}, format="json").status_code == 201
    # another pack: invisible, and nothing can be created in it or moved into it
    assert editor.get(f"{V1}/packs/web").status_code == 404
    assert editor.patch(f"{V1}/actions/web.deploy", {"timeout": 5}, format="json").status_code == 404
    assert editor.post(f"{V1}/actions", {**ACTION, "name": "x"}, format="json").status_code == 403
    assert editor.post(f"{V1}/packs", {"ref": "elsewhere", "version": "1.0.0"}, format="json").status_code == 403
    moved = editor.patch(f"{V1}/actions/ops.restart", {"pack": "web"}, format="json")
    assert moved.status_code == 403
    assert editor.get(f"{V1}/actions/ops.restart").status_code == 200  # still in ops
    for body in ({"name": "k2", "scope": "pack", "owner": "web", "value": 1},
                 {"name": "k3", "scope": "action", "owner": "web.deploy", "value": 1},
                 {"name": "k4", "scope": "system", "value": 1}):
        assert editor.post(f"{V1}/keys", body, format="json").status_code == 403, body
    own_key = Key.objects.get(scope="pack", owner="ops", name="k")
    assert editor.patch(f"{V1}/keys/{own_key.pk}", {"owner": "web"}, format="json").status_code == 403
    assert editor.patch(f"{V1}/keys/{own_key.pk}", {"scope": "system", "owner": ""},
                        format="json").status_code == 403
    assert Key.objects.get(pk=own_key.pk).owner == "ops"
    assert editor.post(f"{V1}/actions/web.deploy/execute", {"parameters": {}}, format="json").status_code == 404
    assert editor.post(f"{V1}/inquiries/{world.ids['inquiry']}/respond", {"response": {"continue": True}},
                       format="json").status_code == 404
