"""Inquiries run for real: the shipped core pack (core.ask), a Celery worker, clients per role."""
from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from apps.accounts.models import PermissionAssignment, PermissionSet
from apps.accounts.services import sync_builtin_sets
from apps.packs.registrar import register_pack, shipped_pack_dirs
from apps.packs.runtimes import sync_builtin_runtimes
from tests.executions.conftest import wait_for  # noqa: F401  (used by the inquiry tests)
from tests.factories import UserFactory

API = "/api/v1"


@pytest.fixture
def core_pack(transactional_db, worker):
    """The shipped core pack (core.ask, core.noop...) registered in a database the worker sees."""
    sync_builtin_runtimes()  # a transactional test's flush removed what the data migrations made
    sync_builtin_sets()
    (core,) = [path for path in shipped_pack_dirs() if path.name == "core"]
    register_pack(core)
    return core


def client_for(username: str, role: str | None = None, packs=None) -> APIClient:
    """A client authenticated as ``username`` (created if needed) holding ``role`` (a permission set name)."""
    user = UserFactory(username=username)
    if role is not None:
        PermissionAssignment.objects.get_or_create(identity=user, permission_set=PermissionSet.objects.get(name=role),
                                                   defaults={"packs": packs})
    client = APIClient()
    client.force_authenticate(user)
    client.user = user
    return client



def ask(client: APIClient, **parameters) -> dict:
    """Run core.ask over HTTP and wait until its inquiry is open; returns the inquiry as the API shows it."""
    response = client.post(f"{API}/actions/core.ask/execute", {"parameters": parameters}, format="json")
    assert response.status_code == 201, response.content
    execution = wait_for(response.json()["id"], "pending")
    inquiry_id = execution.result["inquiry"]
    detail = client.get(f"{API}/inquiries/{inquiry_id}")
    assert detail.status_code == 200, detail.content
    return detail.json()
