"""Inquiries (SPEC §9) over HTTP with a real worker: core.ask opens one and leaves its execution pending;
an allowed person answers once (validated against the schema), or it times out, or it is cancelled."""
from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connections
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from rest_framework.test import APIClient

from apps.accounts.models import ApiToken, AuditEvent, PermissionAssignment, PermissionSet
from apps.core import periodic
from apps.executions.models import Execution
from apps.executions.runners import RunContext
from apps.inquiries.models import DEFAULT_SCHEMA, Inquiry
from apps.inquiries.runner import InquiryRunner

from .conftest import API, ask, client_for, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

PASSWORD = "correct-horse-battery"  # what UserFactory sets
APPROVE = {"type": "object", "properties": {"ok": {"type": "boolean"}, "reason": {"type": "string", "minLength": 3}},
           "required": ["ok"]}


@pytest.fixture
def operator(core_pack):
    return client_for("olga", "operator")


def respond(client: APIClient, inquiry_id: int, response) -> object:
    return client.post(f"{API}/inquiries/{inquiry_id}/respond", {"response": response}, format="json")


def close_enough(value: str, expected, seconds: float = 15.0) -> bool:
    return abs((parse_datetime(value) - expected).total_seconds()) < seconds


# --- opening ---------------------------------------------------------------------------------------------------

def test_ask_opens_a_pending_inquiry_with_the_defaults(operator):
    inquiry = ask(operator, prompt="Reboot the database hosts?")
    execution = Execution.objects.get(pk=inquiry["execution"])
    assert execution.status == "pending"
    assert execution.result == {"inquiry": inquiry["id"]}
    assert inquiry["status"] == "pending"
    assert inquiry["prompt"] == "Reboot the database hosts?"
    assert inquiry["schema"] == DEFAULT_SCHEMA
    assert inquiry["assignees"] == [] and inquiry["roles"] == []
    assert inquiry["response"] is None and inquiry["responded_by"] is None
    assert close_enough(inquiry["timeout_at"], timezone.now() + timedelta(seconds=86400))  # core.ask's timeout
    listed = operator.get(f"{API}/inquiries?status=pending").json()
    assert [i["id"] for i in listed["results"]] == [inquiry["id"]]
    assert operator.get(f"{API}/inquiries?status=responded").json()["count"] == 0


def test_ask_keeps_its_schema_assignees_roles_and_timeout(operator):
    inquiry = ask(operator, prompt="Deploy?", schema=APPROVE, assignees=["olga", "pat"], roles=["approvers"],
                  timeout=120)
    assert inquiry["schema"] == APPROVE
    assert inquiry["assignees"] == ["olga", "pat"]
    assert inquiry["roles"] == ["approvers"]
    assert close_enough(inquiry["timeout_at"], timezone.now() + timedelta(seconds=120), seconds=10)


def test_an_invalid_schema_fails_the_execution_naming_it(operator):
    response = operator.post(f"{API}/actions/core.ask/execute",
                             {"parameters": {"prompt": "?", "schema": {"type": "no-such-type"}}}, format="json")
    assert response.status_code == 201, response.content
    failed = wait_for(response.json()["id"], "failed")
    assert "schema" in failed.result["error"]
    assert not Inquiry.objects.exists()


def test_the_runner_is_idempotent(operator):
    inquiry = ask(operator, prompt="Once?")
    execution = Execution.objects.get(pk=inquiry["execution"])
    ctx = RunContext(execution_id=execution.pk, action_ref="core.ask", pack_ref="core", pack_path=Path("."),
                     runtime_kind="inquiry", interpreter="", entry_point="", parameters={"prompt": "Once?"},
                     parameter_format="json", output_format="text", timeout=86400, cancel_requested=lambda: False)
    outcome = InquiryRunner().run(ctx)  # a redelivered message runs the runner again
    assert (outcome.status, outcome.result) == ("pending", {"inquiry": inquiry["id"]})
    assert Inquiry.objects.filter(execution=execution).count() == 1


# --- answering -------------------------------------------------------------------------------------------------

def test_an_answer_succeeds_the_execution_once(operator):
    inquiry = ask(operator, prompt="Go?")
    answered = respond(operator, inquiry["id"], {"continue": True})
    assert answered.status_code == 200, answered.content
    body = answered.json()
    assert body["status"] == "responded"
    assert body["response"] == {"continue": True}
    assert body["responded_by"] == "olga"
    assert body["responded_at"] is not None
    done = wait_for(inquiry["execution"], "succeeded", timeout=5)
    assert done.result == {"response": {"continue": True}, "responded_by": "olga", "inquiry": inquiry["id"]}

    again = respond(operator, inquiry["id"], {"continue": False})
    assert again.status_code == 409
    assert "responded" in again.json()["detail"]
    assert Inquiry.objects.get(pk=inquiry["id"]).response == {"continue": True}
    assert Execution.objects.get(pk=inquiry["execution"]).result["response"] == {"continue": True}


def test_an_answer_is_validated_against_the_schema_naming_the_field(operator):
    inquiry = ask(operator, prompt="Deploy?", schema=APPROVE)
    missing = respond(operator, inquiry["id"], {"reason": "because"})
    assert missing.status_code == 400
    assert missing.json() == {"response": ["ok: this field is required"]}
    wrong = respond(operator, inquiry["id"], {"ok": "yes", "reason": "no"})
    assert wrong.status_code == 400
    errors = wrong.json()["response"]
    assert any(e.startswith("ok: ") and "boolean" in e for e in errors), errors
    assert any(e.startswith("reason: ") for e in errors), errors
    not_an_object = respond(operator, inquiry["id"], [True])
    assert not_an_object.status_code == 400 and not_an_object.json()["response"][0].startswith("(root): ")
    no_body = operator.post(f"{API}/inquiries/{inquiry['id']}/respond", {}, format="json")
    assert no_body.status_code == 400 and "response" in no_body.json()
    assert Inquiry.objects.get(pk=inquiry["id"]).status == "pending"
    assert Execution.objects.get(pk=inquiry["execution"]).status == "pending"
    assert respond(operator, inquiry["id"], {"ok": False, "reason": "not today"}).status_code == 200


def test_two_concurrent_answers_give_one_200_and_one_409(operator):
    inquiry = ask(operator, prompt="Race?")
    other = client_for("oscar", "operator")
    barrier = threading.Barrier(2)
    statuses: dict[str, int] = {}

    def answer(name, client, value):
        try:
            barrier.wait(5)
            statuses[name] = respond(client, inquiry["id"], {"continue": value}).status_code
        finally:
            connections.close_all()

    threads = [threading.Thread(target=answer, args=("olga", operator, True)),
               threading.Thread(target=answer, args=("oscar", other, False))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(statuses.values()) == [200, 409], statuses
    winner = next(name for name, code in statuses.items() if code == 200)
    row = Inquiry.objects.get(pk=inquiry["id"])
    assert row.responded_by.username == winner
    done = wait_for(inquiry["execution"], "succeeded", timeout=5)
    assert done.result["responded_by"] == winner
    assert done.result["response"] == row.response


# --- who may answer --------------------------------------------------------------------------------------------

def test_viewers_may_read_but_not_answer(operator):
    inquiry = ask(operator, prompt="Go?")
    viewer = client_for("vera", "viewer")
    assert viewer.get(f"{API}/inquiries/{inquiry['id']}").status_code == 200
    refused = respond(viewer, inquiry["id"], {"continue": True})
    assert refused.status_code == 403
    assert "detail" in refused.json()
    assert Inquiry.objects.get(pk=inquiry["id"]).status == "pending"
    anonymous = APIClient().post(f"{API}/inquiries/{inquiry['id']}/respond", {"response": {"continue": True}},
                                 format="json")
    assert anonymous.status_code == 401


def test_editors_and_admins_may_answer(operator):
    first, second = ask(operator, prompt="One?"), ask(operator, prompt="Two?")
    assert respond(client_for("eddie", "editor"), first["id"], {"continue": True}).status_code == 200
    admin = client_for("root")
    admin.user.is_superuser = True
    admin.user.save()
    assert respond(admin, second["id"], {"continue": True}).status_code == 200


def test_only_assignees_may_answer_an_assigned_inquiry(operator):
    inquiry = ask(operator, prompt="Go?", assignees=["pat"])
    refused = respond(operator, inquiry["id"], {"continue": True})
    assert refused.status_code == 403
    assert "pat" in refused.json()["detail"]
    pat = client_for("pat", "operator")
    assert respond(pat, inquiry["id"], {"continue": True}).status_code == 200
    assert Inquiry.objects.get(pk=inquiry["id"]).responded_by.username == "pat"


def test_an_assignee_still_needs_the_respond_grant(operator):
    inquiry = ask(operator, prompt="Go?", assignees=["vera"])
    viewer = client_for("vera", "viewer")
    assert respond(viewer, inquiry["id"], {"continue": True}).status_code == 403


def test_members_of_a_role_may_answer(operator):
    PermissionSet.objects.create(name="approvers", grants=[{"resource": "inquiries", "actions": ["view", "respond"]}])
    inquiry = ask(operator, prompt="Go?", roles=["approvers"])
    assert respond(operator, inquiry["id"], {"continue": True}).status_code == 403  # operator, not an approver
    assert respond(client_for("eddie", "editor"), inquiry["id"], {"continue": True}).status_code == 403
    approver = client_for("amy", "approvers")
    assert respond(approver, inquiry["id"], {"continue": True}).status_code == 200


def test_a_role_limited_to_another_pack_does_not_count(operator):
    approvers = PermissionSet.objects.create(name="approvers",
                                             grants=[{"resource": "inquiries", "actions": ["view", "respond"]}])
    inquiry = ask(operator, prompt="Go?", roles=["approvers"])
    amy = client_for("amy", "operator")  # may answer unassigned inquiries of every pack...
    PermissionAssignment.objects.create(identity=amy.user, permission_set=approvers, packs=["web"])
    refused = respond(amy, inquiry["id"], {"continue": True})  # ...but is an approver for pack web only
    assert refused.status_code == 403
    assert "role approvers" in refused.json()["detail"]
    PermissionAssignment.objects.filter(identity=amy.user, permission_set=approvers).update(packs=["web", "core"])
    assert respond(amy, inquiry["id"], {"continue": True}).status_code == 200


def test_a_pack_limited_operator_cannot_see_or_answer_other_packs(operator):
    inquiry = ask(operator, prompt="Go?")
    limited = client_for("lena", "operator", packs=["web"])
    assert limited.get(f"{API}/inquiries").json()["count"] == 0
    assert limited.get(f"{API}/inquiries/{inquiry['id']}").status_code == 404
    assert respond(limited, inquiry["id"], {"continue": True}).status_code == 404
    core_only = client_for("carl", "operator", packs=["core"])
    assert respond(core_only, inquiry["id"], {"continue": True}).status_code == 200


def test_assigned_to_me_lists_my_inquiries(operator):
    PermissionSet.objects.create(name="approvers", grants=[{"resource": "inquiries", "actions": ["view", "respond"]}])
    mine = ask(operator, prompt="Mine?", assignees=["olga"])
    by_role = ask(operator, prompt="Approvers?", roles=["approvers"])
    others = ask(operator, prompt="Pat's?", assignees=["pat", "olgaa"])
    unassigned = ask(operator, prompt="Anyone?")
    ids = lambda client, query: {i["id"] for i in client.get(f"{API}/inquiries?{query}").json()["results"]}  # noqa: E731
    assert ids(operator, "assigned_to_me=true") == {mine["id"]}
    assert ids(operator, "assigned_to_me=false") == {by_role["id"], others["id"], unassigned["id"]}
    approver = client_for("olga", "approvers")  # olga now also holds the approvers role
    assert ids(approver, "assigned_to_me=true") == {mine["id"], by_role["id"]}
    assert ids(approver, "assigned_to_me=true&status=responded") == set()


def test_an_execution_may_not_answer_its_own_inquiry(core_pack):
    """The execution acts as the identity that started it; its API token cannot answer the inquiry."""
    bot = client_for("ci-bot", "operator")
    _token, raw = ApiToken.issue(bot.user, "pipeline")
    as_token = APIClient()
    as_token.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
    inquiry = ask(as_token, prompt="Ship it?")
    assert Execution.objects.get(pk=inquiry["execution"]).started_by == bot.user
    refused = respond(as_token, inquiry["id"], {"continue": True})
    assert refused.status_code == 403
    assert "its own inquiry" in refused.json()["detail"]
    assert Inquiry.objects.get(pk=inquiry["id"]).status == "pending"

    # The same identity logged in interactively (a person in the loop) may answer.
    person = APIClient()
    access = person.post(f"{API}/auth/login", {"username": "ci-bot", "password": PASSWORD}).json()["access"]
    person.credentials(HTTP_AUTHORIZATION=f"Bearer {access}")
    assert respond(person, inquiry["id"], {"continue": True}).status_code == 200


def test_someone_elses_token_may_answer(operator):
    inquiry = ask(operator, prompt="Go?")
    other = client_for("oscar", "operator")
    _token, raw = ApiToken.issue(other.user, "cli")
    as_token = APIClient()
    as_token.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
    assert respond(as_token, inquiry["id"], {"continue": True}).status_code == 200


# --- timeouts and cancels --------------------------------------------------------------------------------------

def test_an_unanswered_inquiry_times_out_with_its_execution(operator):
    inquiry = ask(operator, prompt="Quick?", timeout=1)
    job = next(job for job in periodic.jobs() if job.name == "inquiries.expire")
    assert job.every == 1
    assert job.fn() == 0  # not due yet
    Inquiry.objects.filter(pk=inquiry["id"]).update(timeout_at=timezone.now() - timedelta(seconds=1))
    assert job.fn() == 1
    assert job.fn() == 0  # once
    detail = operator.get(f"{API}/inquiries/{inquiry['id']}").json()
    assert detail["status"] == "timeout"
    done = wait_for(inquiry["execution"], "timeout", timeout=5)
    assert done.result["inquiry"] == inquiry["id"] and "not answered" in done.result["error"]
    late = respond(operator, inquiry["id"], {"continue": True})
    assert late.status_code == 409
    assert Execution.objects.get(pk=inquiry["execution"]).status == "timeout"


def test_cancelling_the_execution_cancels_the_inquiry(operator):
    inquiry = ask(operator, prompt="Go?")
    canceled = operator.post(f"{API}/executions/{inquiry['execution']}/cancel")
    assert canceled.status_code == 200, canceled.content
    assert canceled.json()["status"] == "canceled"
    assert operator.get(f"{API}/inquiries/{inquiry['id']}").json()["status"] == "canceled"
    late = respond(operator, inquiry["id"], {"continue": True})
    assert late.status_code == 409
    assert Execution.objects.get(pk=inquiry["execution"]).status == "canceled"


def test_an_answer_is_audited(operator):
    inquiry = ask(operator, prompt="Go?", schema=APPROVE)
    assert respond(operator, inquiry["id"], {"ok": True, "reason": "all green"}).status_code == 200
    event = AuditEvent.objects.get(action="inquiry.respond")
    assert (event.actor_name, event.object_type, event.object_ref, event.pack_ref) == (
        "olga", "inquiry", str(inquiry["id"]), "core")
    assert event.details == {"execution": inquiry["execution"], "fields": ["ok", "reason"]}
    assert "all green" not in str(event.details)
    started = AuditEvent.objects.get(action="execution.create")
    assert (started.actor_name, started.object_ref, started.details) == (
        "olga", str(inquiry["execution"]), {"action_ref": "core.ask"})
