"""Rows kept per process under the configuration generation (apps.core.generation): the JWT user read and the
execute endpoint's action read cost no query while nothing changed, and see every change at once."""
from __future__ import annotations

import pytest
from django.core.cache import cache
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import AccessToken

from apps.accounts.authentication import JWTAuthentication
from apps.actions.models import Action
from apps.actions.selectors import action_with_runtime
from apps.core import generation
from tests.factories import ActionFactory, UserFactory

pytestmark = pytest.mark.django_db


def authenticate(user):
    return JWTAuthentication().get_user(AccessToken.for_user(user))


def test_the_jwt_user_is_read_once_then_kept(django_assert_num_queries):
    user = UserFactory()
    first = authenticate(user)
    with django_assert_num_queries(0):
        second = authenticate(user)
    assert first.pk == second.pk == user.pk and first is not second  # a new instance per request
    first._attune_grants = {"stale": True}
    assert not hasattr(authenticate(user), "_attune_grants")  # nothing carried from one request to the next


def test_a_deactivated_user_is_refused_at_once(django_assert_num_queries):
    user = UserFactory()
    authenticate(user)
    user.is_active = False
    user.save()
    with pytest.raises(AuthenticationFailed):
        authenticate(user)


def test_a_change_in_another_process_is_seen_through_the_shared_generation(django_assert_num_queries):
    from apps.accounts.models import User

    user = UserFactory()
    authenticate(user)
    User.objects.filter(pk=user.pk).update(is_active=False)  # no signal in this process
    cache.set(generation.KEY, "published-by-another-process", timeout=None)
    with django_assert_num_queries(1):
        with pytest.raises(AuthenticationFailed):
            authenticate(user)


def test_a_change_without_save_is_seen_within_the_recheck_interval(monkeypatch):
    from apps.accounts.models import User

    user = UserFactory()
    authenticate(user)
    User.objects.filter(pk=user.pk).update(is_active=False)  # no signal, no new generation
    assert authenticate(user).is_active  # within the interval: the kept row
    monkeypatch.setattr(generation, "RECHECK_SECONDS", 0.0)
    with pytest.raises(AuthenticationFailed):
        authenticate(user)


def test_without_the_shared_cache_every_request_reads_the_database(monkeypatch, django_assert_num_queries):
    user = UserFactory()
    monkeypatch.setattr(generation, "current", lambda **_: None)
    authenticate(user)
    with django_assert_num_queries(1):
        authenticate(user)


def test_the_cached_action_read_sees_edits_and_deletes(django_assert_num_queries):
    action = ActionFactory(description="before")
    assert action_with_runtime(ref=action.ref, cached=True).description == "before"
    with django_assert_num_queries(0):
        kept = action_with_runtime(ref=action.ref, cached=True)
    assert kept.pack.ref == action.pack.ref and kept.runner_type.name == action.runner_type.name
    kept.parameters["injected"] = {"type": "string"}  # a caller's change never reaches the next caller
    assert "injected" not in action_with_runtime(ref=action.ref, cached=True).parameters
    action.description = "after"
    action.save()
    assert action_with_runtime(ref=action.ref, cached=True).description == "after"
    Action.objects.filter(pk=action.pk).delete()
    assert action_with_runtime(ref=action.ref, cached=True) is None


def test_disabling_an_action_through_the_api_stops_its_executions_at_once():
    admin = UserFactory(username="gen-admin", is_staff=True, is_superuser=True)
    client = APIClient()
    client.force_authenticate(admin)
    action = ActionFactory()
    url = f"/api/v1/actions/{action.ref}"
    assert client.post(f"{url}/execute", {"parameters": {"message": "x"}}, format="json").status_code == 201
    assert client.patch(url, {"enabled": False}, format="json").status_code == 200
    refused = client.post(f"{url}/execute", {"parameters": {"message": "x"}}, format="json")
    assert refused.status_code == 409, refused.content
    assert client.patch(url, {"enabled": True}, format="json").status_code == 200
    assert client.post(f"{url}/execute", {"parameters": {"message": "x"}}, format="json").status_code == 201


def test_enable_and_disable_endpoints_publish_a_new_generation(django_capture_on_commit_callbacks):
    """``POST .../disable`` is an update() (no save signal): it still replaces the generation."""
    from tests.factories import RuleFactory

    admin = UserFactory(username="gen-admin2", is_staff=True, is_superuser=True)
    client = APIClient()
    client.force_authenticate(admin)
    rule = RuleFactory()
    before = generation.current(create=True)
    with django_capture_on_commit_callbacks(execute=True):
        assert client.post(f"/api/v1/rules/{rule.ref}/disable").status_code == 200
    assert generation.current() not in (None, before)


def test_webhook_rows_are_kept_and_a_regenerated_or_disabled_key_is_refused_at_once(django_assert_num_queries):
    from apps.triggers import webhooks
    from tests.factories import TriggerFactory

    trigger = TriggerFactory()
    hook, issued = webhooks.enable(trigger, {})
    key_hash = webhooks.hash_key(issued.key)
    assert webhooks._enabled_webhook(key_hash).pk == hook.pk
    with django_assert_num_queries(0):
        assert webhooks._enabled_webhook(key_hash).trigger.pk == trigger.pk
    new = webhooks.regenerate(hook)
    assert webhooks._enabled_webhook(key_hash) is None  # the old key: refused at once
    new_hash = webhooks.hash_key(new.key)
    assert webhooks._enabled_webhook(new_hash).pk == hook.pk
    webhooks.disable(hook)
    assert webhooks._enabled_webhook(new_hash) is None
