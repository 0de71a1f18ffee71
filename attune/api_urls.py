"""Every /api/v1/ route. Trailing slashes are optional (SPEC §11)."""
from __future__ import annotations

from django.urls import re_path
from rest_framework.routers import DefaultRouter

from apps.accounts.api import views as accounts
from apps.actions.api.views import ActionViewSet
from apps.executions.api.views import (
    ActionOperationsViewSet,
    ArtifactViewSet,
    ExecutionViewSet,
    PolicyViewSet,
    WorkerViewSet,
)
from apps.inquiries.api.views import InquiryViewSet
from apps.keys.api.views import KeyViewSet
from apps.packs.api.views import PackViewSet, RuntimeViewSet
from apps.rules.api.views import EnforcementViewSet, RuleViewSet
from apps.triggers import webhooks
from apps.triggers.api.views import EventViewSet, SensorViewSet, TriggerViewSet
from apps.workflows.api.validate import WorkflowValidateView


class Router(DefaultRouter):
    include_format_suffixes = False

    def __init__(self):
        super().__init__()
        self.trailing_slash = "/?"


router = Router()
router.register("packs", PackViewSet, basename="pack")
router.register("runtimes", RuntimeViewSet, basename="runtime")
router.register("actions", ActionViewSet, basename="action")
router.register("actions", ActionOperationsViewSet, basename="action-operation")
router.register("triggers", TriggerViewSet, basename="trigger")
router.register("sensors", SensorViewSet, basename="sensor")
router.register("rules", RuleViewSet, basename="rule")
router.register("policies", PolicyViewSet, basename="policy")
router.register("keys", KeyViewSet, basename="key")
router.register("events", EventViewSet, basename="event")
router.register("enforcements", EnforcementViewSet, basename="enforcement")
router.register("executions", ExecutionViewSet, basename="execution")
router.register("inquiries", InquiryViewSet, basename="inquiry")
router.register("workers", WorkerViewSet, basename="worker")
router.register("artifacts", ArtifactViewSet, basename="artifact")
router.register("identities", accounts.IdentityViewSet, basename="identity")
router.register("permission-sets", accounts.PermissionSetViewSet, basename="permission-set")
router.register("permission-assignments", accounts.PermissionAssignmentViewSet, basename="permission-assignment")
router.register("auth/tokens", accounts.ApiTokenViewSet, basename="api-token")
router.register("audit", accounts.AuditEventViewSet, basename="audit-event")

urlpatterns = [
    re_path(r"^webhooks/(?P<key>[A-Za-z0-9_-]+)/?$", webhooks.receive, name="webhook-receive"),
    re_path(r"^auth/login/?$", accounts.LoginView.as_view(), name="auth-login"),
    re_path(r"^auth/refresh/?$", accounts.RefreshView.as_view(), name="auth-refresh"),
    re_path(r"^auth/register/?$", accounts.RegisterView.as_view(), name="auth-register"),
    re_path(r"^auth/me/?$", accounts.MeView.as_view(), name="auth-me"),
    re_path(r"^auth/change-password/?$", accounts.ChangePasswordView.as_view(), name="auth-change-password"),
    re_path(r"^workflows/validate/?$", WorkflowValidateView.as_view(), name="workflow-validate"),
    *router.urls,
]
