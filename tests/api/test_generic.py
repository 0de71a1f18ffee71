"""Behaviour every /api/v1/ resource shares: authentication, list/detail, read-only verbs, pagination,
404s and a constant number of queries per list page. One table (``resources.RESOURCES``) drives it all."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.core.api.pagination import Pagination
from apps.packs.models import Pack
from apps.triggers.models import Event
from tests.factories import ActionFactory, ExecutionFactory, PackFactory

from .resources import API, READ_ONLY, RESOURCE_IDS, RESOURCES

pytestmark = pytest.mark.django_db

# Placeholder lookups: anonymous requests must be refused before any lookup happens.
ANON_LOOKUP = {"actions": "core.echo", "triggers": "core.webhook", "sensors": "core.watch", "rules": "core.r",
               "policies": "core.p", "packs": "core", "runtimes": "shell", "identities": "root",
               "permission-sets": "admin"}


# --- 1. authentication ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("resource", RESOURCES, ids=RESOURCE_IDS)
def test_anonymous_list_and_detail_are_401(api, resource):
    lookup = ANON_LOOKUP.get(resource.name, "1")
    for url in (resource.list_url, resource.list_url.rstrip("/"), resource.detail_url(lookup)):
        response = api.get(url)
        assert response.status_code == 401, url
        assert "detail" in response.json()
        # JWT is the first authenticator, so the challenge names Bearer.
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("resource", RESOURCES, ids=RESOURCE_IDS)
def test_anonymous_writes_are_401(api, resource):
    lookup = ANON_LOOKUP.get(resource.name, "1")
    assert api.post(resource.list_url, {}).status_code == 401
    assert api.patch(resource.detail_url(lookup), {}).status_code == 401
    assert api.delete(resource.detail_url(lookup)).status_code == 401


@pytest.mark.parametrize("url", ["/api/v1/auth/me", "/api/v1/auth/me/"])
def test_anonymous_me_is_401(api, url):
    assert api.get(url).status_code == 401


def test_anonymous_change_password_is_401(api):
    assert api.post(f"{API}/auth/change-password", {"old_password": "a", "new_password": "b"}).status_code == 401


@pytest.mark.parametrize("url", ["/health/live", "/health/ready", "/health/", "/api/schema/?format=json", "/docs/"])
def test_public_endpoints_need_no_login(api, url):
    assert api.get(url).status_code == 200


def test_login_is_public(api):
    # A wrong password is a 401 from the login endpoint itself, not an authentication wall: the body says why.
    response = api.post(f"{API}/auth/login", {"username": "nobody", "password": "wrong"})
    assert response.status_code == 401
    assert "detail" in response.json()


# --- 2. list and detail --------------------------------------------------------------------------------------

@pytest.mark.parametrize("resource", RESOURCES, ids=RESOURCE_IDS)
def test_admin_lists_and_retrieves(admin_api, resource):
    lookups = resource.build(2)
    for url in (resource.list_url, resource.list_url.rstrip("/")):
        response = admin_api.get(url)
        assert response.status_code == 200, response.content
        body = response.json()
        assert set(body) == {"count", "next", "previous", "results"}
        assert body["count"] >= 2
    for lookup in lookups:
        for url in (resource.detail_url(lookup), resource.detail_url(lookup).rstrip("/")):
            response = admin_api.get(url)
            assert response.status_code == 200, (url, response.content)
            body = response.json()
            assert lookup in {str(v) for v in body.values() if isinstance(v, str | int)}


@pytest.mark.parametrize("resource", RESOURCES, ids=RESOURCE_IDS)
def test_unknown_detail_is_404_with_detail(admin_api, resource):
    lookup = {"packs": "nosuchpack", "runtimes": "nosuchruntime", "identities": "nosuchuser",
              "permission-sets": "nosuchset"}.get(resource.name, "nosuch.thing")
    if resource.name in {"keys", "permission-assignments", "auth/tokens"} or resource.read_only:
        lookup = "987654"
    response = admin_api.get(resource.detail_url(lookup))
    assert response.status_code == 404
    assert set(response.json()) == {"detail"}


# --- read-only resources -------------------------------------------------------------------------------------

@pytest.mark.parametrize("resource", READ_ONLY, ids=[r.name for r in READ_ONLY])
def test_read_only_resources_refuse_writes(admin_api, resource):
    (lookup,) = resource.build(1)
    detail = resource.detail_url(lookup)
    before = admin_api.get(detail).json()
    # POST /events (emit, SPEC §4) and POST /executions (run an action) exist; they are tested elsewhere.
    if resource.name not in ("events", "executions"):
        assert admin_api.post(resource.list_url, {"status": "succeeded"}).status_code == 405
    assert admin_api.put(detail, {"status": "succeeded"}).status_code == 405
    assert admin_api.patch(detail, {"status": "succeeded"}).status_code == 405
    assert admin_api.delete(detail).status_code == 405
    assert admin_api.get(detail).json() == before


# --- 3. pagination -------------------------------------------------------------------------------------------

def test_page_size_one_gives_one_result_and_links(admin_api):
    PackFactory(ref="alpha"), PackFactory(ref="bravo"), PackFactory(ref="charlie")
    body = admin_api.get(f"{API}/packs/?page_size=1").json()
    assert body["count"] == 3
    assert len(body["results"]) == 1
    assert body["results"][0]["ref"] == "alpha"
    assert body["previous"] is None
    assert "page=2" in body["next"]

    second = admin_api.get(f"{API}/packs/?page_size=1&page=2").json()
    assert [p["ref"] for p in second["results"]] == ["bravo"]
    assert second["previous"] is not None and second["next"] is not None

    last = admin_api.get(f"{API}/packs/?page_size=1&page=3").json()
    assert [p["ref"] for p in last["results"]] == ["charlie"]
    assert last["next"] is None


def test_page_out_of_range_is_404(admin_api):
    PackFactory(ref="alpha")
    response = admin_api.get(f"{API}/packs/?page=99")
    assert response.status_code == 404
    assert "detail" in response.json()


def test_default_page_size_is_50(admin_api):
    Event.objects.bulk_create([Event(trigger_ref="core.webhook", payload={"i": i}) for i in range(60)])
    body = admin_api.get(f"{API}/events/").json()
    assert body["count"] == 60
    assert len(body["results"]) == 50
    assert body["next"] is not None


def test_page_size_above_1000_is_capped(admin_api):
    assert Pagination.max_page_size == 1000
    PackFactory(ref="alpha"), PackFactory(ref="bravo"), PackFactory(ref="charlie")
    small = admin_api.get(f"{API}/packs/?page_size=5000")
    assert small.status_code == 200
    assert len(small.json()["results"]) == 3

    Event.objects.bulk_create([Event(trigger_ref="core.webhook", payload={"i": i}) for i in range(1001)])
    body = admin_api.get(f"{API}/events/?page_size=100000").json()
    assert body["count"] == 1001
    assert len(body["results"]) == 1000
    assert body["next"] is not None
    rest = admin_api.get(body["next"]).json()
    assert len(rest["results"]) == 1


# --- ordering ------------------------------------------------------------------------------------------------

def test_ordering_query_parameter(admin_api):
    start = timezone.now() - timedelta(days=1)
    for minutes, ref in enumerate(("bravo", "alpha", "charlie")):
        Pack.objects.filter(pk=PackFactory(ref=ref).pk).update(created=start + timedelta(minutes=minutes))
    assert [p["ref"] for p in admin_api.get(f"{API}/packs/?ordering=-ref").json()["results"]] == [
        "charlie", "bravo", "alpha"]
    assert [p["ref"] for p in admin_api.get(f"{API}/packs/?ordering=created").json()["results"]] == [
        "bravo", "alpha", "charlie"]
    assert [p["ref"] for p in admin_api.get(f"{API}/packs/?ordering=-created").json()["results"]] == [
        "charlie", "alpha", "bravo"]


# --- 8. query counts -----------------------------------------------------------------------------------------

MAX_LIST_QUERIES = 8


def _count_list_queries(client, url) -> int:
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url)
    assert response.status_code == 200, response.content
    return len(ctx.captured_queries)


@pytest.mark.parametrize("resource", RESOURCES, ids=RESOURCE_IDS)
def test_list_query_count_is_constant(admin_api, resource, django_assert_max_num_queries):
    resource.build(5)
    url = f"{resource.list_url}?page_size=100"
    with_5 = _count_list_queries(admin_api, url)
    resource.build(15)
    with_20 = _count_list_queries(admin_api, url)
    assert admin_api.get(url).json()["count"] >= 20
    assert with_20 == with_5, f"{resource.name}: {with_5} queries for 5 rows, {with_20} for 20 (N+1)"
    with django_assert_max_num_queries(MAX_LIST_QUERIES):
        admin_api.get(url)


def test_delayed_executions_list_query_count_is_constant(admin_api):
    """Delayed executions show their FIFO queue position; a page of them must not cost a query per row."""
    action = ActionFactory()
    url = f"{API}/executions/?status=delayed&page_size=100"
    for _ in range(5):
        ExecutionFactory(action=action, status="delayed")
    with_5 = _count_list_queries(admin_api, url)
    for _ in range(15):
        ExecutionFactory(action=action, status="delayed")
    with_20 = _count_list_queries(admin_api, url)
    positions = [row["queue_position"] for row in admin_api.get(url).json()["results"]]
    assert sorted(positions) == list(range(1, 21))
    assert with_20 == with_5, f"{with_5} queries for 5 delayed executions, {with_20} for 20 (N+1)"
