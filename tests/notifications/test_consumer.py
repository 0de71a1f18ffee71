"""/ws/ with channels' WebsocketCommunicator: authentication, subscriptions, permissions, resume.

Publications are made from a worker thread (``database_sync_to_async``), as the application makes them.
"Nothing is delivered for X" is checked with a sentinel: X is published first, then something the socket
does receive; the next message must be the sentinel (both go through the same ordered path).
"""
from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from django.db import transaction
from django.utils import timezone
from rest_framework_simplejwt.tokens import AccessToken

from apps.core.statemachine import transition
from apps.executions.executor import LiveOutput
from apps.executions.models import Execution, OutputChunk
from apps.notifications import services
from tests.factories import ExecutionFactory

from .conftest import api_token_for, connect, expect_close, jwt_for, receive, run

pytestmark = pytest.mark.timeout(60)


@database_sync_to_async
def move(execution_id: int, to: str, **fields) -> bool:
    return transition(Execution.objects.get(pk=execution_id), to=to, **fields)


async def subscribe(ws, topics, since=None) -> dict:
    message = {"subscribe": topics}
    if since is not None:
        message["since"] = since
    await ws.send_json_to(message)
    reply = await receive(ws)
    assert reply["type"] == "subscribed", reply
    return reply


async def receive_until(ws, predicate, limit: int = 50) -> list[dict]:
    seen = []
    for _ in range(limit):
        seen.append(await receive(ws))
        if predicate(seen[-1]):
            return seen
    raise AssertionError(f"no matching message in {seen}")


# --- authentication -------------------------------------------------------------------------------------

def test_jwt_in_the_query_string_authenticates(world):
    admin = world["users"]["admin"]
    token = jwt_for(admin)

    async def scenario():
        ws = await connect(f"/ws/?token={token}")
        hello = await receive(ws)
        assert hello["type"] == "authenticated" and hello["user"] == "admin" and hello["expires_at"]
        await ws.send_json_to({"ping": 7})
        assert await receive(ws) == {"type": "pong", "ping": 7}
        await ws.disconnect()

    run(scenario())


def test_api_token_in_the_query_string_header_and_first_message(world):
    operator = world["users"]["operator"]
    raw = api_token_for(operator)
    execution = world["executions"]["alpha"]

    async def scenario():
        ws = await connect(f"/ws/?token={raw}")
        assert (await receive(ws))["user"] == "operator"
        await ws.disconnect()

        ws = await connect(headers=[(b"authorization", f"Token {raw}".encode())])
        assert (await receive(ws))["user"] == "operator"
        await ws.disconnect()

        ws = await connect()  # token and subscription in the first message
        await ws.send_json_to({"token": raw, "subscribe": [f"execution:{execution.pk}"]})
        assert (await receive(ws))["type"] == "authenticated"
        reply = await receive(ws)
        assert reply["type"] == "subscribed" and reply["topics"] == [f"execution:{execution.pk}"]
        await ws.disconnect()

    run(scenario())
    from apps.accounts.models import ApiToken

    assert ApiToken.objects.get(user=operator).last_used_at is not None


@pytest.mark.parametrize("how", ["query", "first message"])
def test_bad_tokens_close_with_4401(world, how):
    operator = world["users"]["operator"]
    revoked_raw = api_token_for(operator)
    from apps.accounts.models import ApiToken

    ApiToken.objects.filter(user=operator).update(revoked_at=timezone.now())
    expired_api = api_token_for(operator, expires_at=timezone.now() - timedelta(minutes=1))
    stale_jwt = AccessToken.for_user(operator)
    stale_jwt.set_exp(lifetime=timedelta(seconds=-5))
    inactive = world["users"]["beta_viewer"]
    inactive_jwt = jwt_for(inactive)
    inactive.is_active = False
    inactive.save()
    bad = ["garbage", jwt_for(operator)[:-3] + "xyz", revoked_raw, expired_api, str(stale_jwt), inactive_jwt]

    async def scenario():
        for raw in bad:
            if how == "query":
                ws = await connect(f"/ws/?token={raw}")
            else:
                ws = await connect()
                await ws.send_json_to({"token": raw})
            closed = await expect_close(ws)
            assert closed["code"] == 4401, raw
            await ws.wait()

    run(scenario())


def test_messages_before_authentication_close_the_socket(world):
    async def scenario():
        ws = await connect()
        await ws.send_json_to({"subscribe": ["executions"]})
        closed = await expect_close(ws)
        assert closed["code"] == 4401 and "authenticate" in closed["reason"]
        await ws.wait()

    run(scenario())


def test_an_expiring_token_closes_the_socket_unless_refreshed(world):
    operator = world["users"]["operator"]
    short = AccessToken.for_user(operator)
    short.set_exp(lifetime=timedelta(seconds=2))
    fresh = jwt_for(operator)
    other = jwt_for(world["users"]["admin"])

    async def scenario():
        ws = await connect(f"/ws/?token={short}")
        assert (await receive(ws))["type"] == "authenticated"
        closed = await expect_close(ws)  # two seconds later
        assert closed["code"] == 4401 and closed["reason"] == "token expired"
        await ws.wait()

        short_again = AccessToken.for_user(operator)
        short_again.set_exp(lifetime=timedelta(seconds=2))
        ws = await connect(f"/ws/?token={short_again}")
        await receive(ws)
        await ws.send_json_to({"token": other})  # another identity's token does not replace this one
        assert (await receive(ws))["type"] == "error"
        await ws.send_json_to({"token": fresh})
        refreshed = await receive(ws)
        assert refreshed["type"] == "authenticated" and refreshed["user"] == "operator"
        await asyncio.sleep(3)  # past the first token's expiry: still open
        await ws.send_json_to({"ping": "still here"})
        assert (await receive(ws))["type"] == "pong"
        await ws.disconnect()

    run(scenario())


def test_malformed_messages_are_answered_with_errors(world):
    token = jwt_for(world["users"]["admin"])

    async def scenario():
        ws = await connect(f"/ws/?token={token}")
        await receive(ws)
        for bad in ["not json", "[1, 2]"]:
            await ws.send_to(text_data=bad)
            assert (await receive(ws))["type"] == "error"
        await ws.send_to(bytes_data=b"\x00")
        assert (await receive(ws))["type"] == "error"
        for message in [{"subscribe": "executions"}, {"subscribe": [1]}, {"hello": 1}, {"since": {}},
                        {"subscribe": ["executions"], "since": {"executions": "x"}},
                        {"subscribe": ["executions"], "since": {"executions": {"stdout": -1}}}]:
            await ws.send_json_to(message)
            reply = await receive(ws)
            assert reply["type"] == "error", (message, reply)
        reply = await subscribe(ws, ["events", "execution:abc", "execution:999999", "executions:Bad Pack"])
        assert reply["topics"] == []
        reasons = {r["topic"]: r["reason"] for r in reply["refused"]}
        assert "unknown topic" in reasons["events"] and "unknown topic" in reasons["execution:abc"]
        assert "no such execution" in reasons["execution:999999"]
        await ws.disconnect()

    run(scenario())


# --- permissions ----------------------------------------------------------------------------------------

def test_refused_topics_are_reported_and_deliver_nothing(world):
    alpha, beta = world["executions"]["alpha"], world["executions"]["beta"]
    token = api_token_for(world["users"]["beta_viewer"])

    async def scenario():
        ws = await connect(f"/ws/?token={token}")
        await receive(ws)
        reply = await subscribe(ws, [f"execution:{alpha.pk}", f"execution:{beta.pk}", "executions:alpha"])
        assert reply["topics"] == [f"execution:{beta.pk}"]
        assert {r["topic"] for r in reply["refused"]} == {f"execution:{alpha.pk}", "executions:alpha"}
        assert "executions:view" in next(r["reason"] for r in reply["refused"] if r["topic"] == "executions:alpha")
        snapshot = await receive(ws)
        assert snapshot["type"] == "snapshot" and snapshot["id"] == beta.pk
        assert await move(alpha.pk, "scheduled")  # refused: must not arrive
        assert await move(beta.pk, "scheduled")  # the sentinel
        message = await receive(ws)
        assert message["topic"] == f"execution:{beta.pk}" and message["status"] == "scheduled"
        await ws.disconnect()

    run(scenario())


def test_pack_limited_identity_gets_only_its_packs_on_the_broad_topic(world):
    alpha, beta = world["executions"]["alpha"], world["executions"]["beta"]
    viewer, operator = jwt_for(world["users"]["beta_viewer"]), jwt_for(world["users"]["operator"])

    async def scenario():
        limited = await connect(f"/ws/?token={viewer}")
        full = await connect(f"/ws/?token={operator}")
        await receive(limited)
        await receive(full)
        reply = await subscribe(limited, ["executions", "inquiries"])
        assert reply["topics"] == ["executions:beta", "inquiries:beta"] and reply["refused"] == []
        assert set(reply["seq"]) == {"executions:beta", "inquiries:beta"}
        base = reply["seq"]["executions:beta"]
        reply = await subscribe(full, ["executions"])
        assert reply["topics"] == ["executions"]
        full_base = reply["seq"]["executions"]

        assert await move(alpha.pk, "scheduled")
        assert await move(beta.pk, "scheduled")
        got = await receive(limited)
        assert (got["topic"], got["id"], got["status"], got["seq"]) == ("executions:beta", beta.pk, "scheduled", base + 1)
        first, second = await receive(full), await receive(full)
        assert [(m["topic"], m["id"], m["seq"]) for m in (first, second)] == [
            ("executions", alpha.pk, full_base + 1), ("executions", beta.pk, full_base + 2)]

        await limited.send_json_to({"unsubscribe": ["executions"]})
        assert await receive(limited) == {"type": "unsubscribed", "topics": ["executions:beta"]}
        assert await move(beta.pk, "running")
        await limited.send_json_to({"ping": "sentinel"})
        assert (await receive(full))["status"] == "running"
        assert await receive(limited) == {"type": "pong", "ping": "sentinel"}
        await limited.disconnect()
        await full.disconnect()

    run(scenario())


# --- what is published ----------------------------------------------------------------------------------

def test_status_changes_arrive_in_order_with_consecutive_seq(world):
    execution = world["executions"]["alpha"]
    topic = f"execution:{execution.pk}"
    token = jwt_for(world["users"]["operator"])

    @database_sync_to_async
    def rolled_back():
        with transaction.atomic():
            assert transition(Execution.objects.get(pk=execution.pk), to="scheduled")
            transaction.set_rollback(True)

    async def scenario():
        ws = await connect(f"/ws/?token={token}")
        await receive(ws)
        reply = await subscribe(ws, [topic])
        base = reply["seq"][topic]
        snapshot = await receive(ws)
        assert snapshot == {**snapshot, "type": "snapshot", "topic": topic, "id": execution.pk, "seq": base,
                            "status": "requested", "pack_ref": "alpha", "stdout_size": 0}
        await rolled_back()  # never committed: never published
        assert await move(execution.pk, "scheduled", scheduled_at=timezone.now())
        assert await move(execution.pk, "running", started_at=timezone.now())
        assert not await move(execution.pk, "running")  # a lost race publishes nothing
        assert await move(execution.pk, "succeeded", result={})
        messages = [await receive(ws) for _ in range(3)]
        assert [m["status"] for m in messages] == ["scheduled", "running", "succeeded"]
        assert [m["seq"] for m in messages] == [base + 1, base + 2, base + 3]
        done = messages[-1]
        assert done["type"] == "status" and done["action_ref"] == execution.action_ref and done["parent"] is None
        assert done["started_at"] and done["finished_at"] and done["scheduled_at"]
        await ws.disconnect()

    run(scenario())


def test_a_transaction_publishes_before_what_it_registers_after_its_first_change(world):
    """The messages of a transaction go out together, before the commit callbacks registered after its first
    change: the run messages of the executions it scheduled are such callbacks (apps.executions.services), so
    a worker's ``running`` can never overtake the ``scheduled`` of a fan-out's later children."""
    first, second = world["executions"]["alpha"], world["executions"]["beta"]
    third = ExecutionFactory(action=first.action)
    token = jwt_for(world["users"]["operator"])

    @database_sync_to_async
    def fan_out():
        with transaction.atomic():
            assert transition(Execution.objects.get(pk=first.pk), to="scheduled")
            transaction.on_commit(lambda: transition(Execution.objects.get(pk=second.pk), to="scheduled"))
            assert transition(Execution.objects.get(pk=third.pk), to="scheduled")

    async def scenario():
        ws = await connect(f"/ws/?token={token}")
        await receive(ws)
        base = (await subscribe(ws, ["executions"]))["seq"]["executions"]
        await fan_out()
        got = [await receive(ws) for _ in range(3)]
        assert [(m["id"], m["seq"]) for m in got] == [(first.pk, base + 1), (third.pk, base + 2), (second.pk, base + 3)]
        await ws.disconnect()

    run(scenario())


def test_output_is_published_and_replayed_from_an_offset(world):
    execution = world["executions"]["alpha"]
    topic = f"execution:{execution.pk}"
    token = jwt_for(world["users"]["operator"])
    live = LiveOutput(execution.pk, [])

    async def scenario():
        ws = await connect(f"/ws/?token={token}")
        await receive(ws)
        base = (await subscribe(ws, [topic]))["seq"][topic]
        await receive(ws)  # snapshot
        await database_sync_to_async(live)("stdout", 0, "line1\n")
        await database_sync_to_async(live)("stderr", 0, "oops\n")
        await database_sync_to_async(live)("stdout", 6, "lïne2\n")
        got = [await receive(ws) for _ in range(3)]
        assert [(m["type"], m["stream"], m["offset"], m["data"], m["seq"]) for m in got] == [
            ("output", "stdout", 0, "line1\n", base + 1), ("output", "stderr", 0, "oops\n", base + 2),
            ("output", "stdout", 6, "lïne2\n", base + 3)]
        await ws.disconnect()

        # Resume: seen up to seq base+1 and 3 bytes of stdout; stderr not wanted.
        ws = await connect(f"/ws/?token={token}")
        await receive(ws)
        reply = await subscribe(ws, [topic], since={topic: {"seq": base + 1, "stdout": 3}})
        assert reply["seq"][topic] == base + 3 and reply["missed"] == {topic: 2}
        snapshot = await receive(ws)
        assert snapshot["type"] == "snapshot" and snapshot["stdout_size"] == 6 + len("lïne2\n".encode())
        replay = [await receive(ws) for _ in range(2)]
        assert [(m["stream"], m["offset"], m["data"], m["replay"]) for m in replay] == [
            ("stdout", 3, "e1\n", True), ("stdout", 6, "lïne2\n", True)]
        assert all("seq" not in m for m in replay)
        await ws.disconnect()

        # An offset inside a character resumes at the next character.
        ws = await connect(f"/ws/?token={token}")
        await receive(ws)
        await subscribe(ws, [topic], since={topic: {"stdout": 8}})  # "lïne2": "ï" is bytes 7-8
        await receive(ws)  # snapshot
        replayed = await receive(ws)
        assert (replayed["offset"], replayed["data"]) == (9, "ne2\n")
        await ws.disconnect()

        # A seq from before a counter reset (a restart, an expired topic) is reported as unknown.
        ws = await connect(f"/ws/?token={token}")
        await receive(ws)
        reply = await subscribe(ws, [topic], since={topic: base + 1000})
        assert reply["missed"] == {topic: None}
        await ws.disconnect()

    run(scenario())
    assert list(OutputChunk.objects.filter(execution=execution).values_list("stream", "offset")) == [
        ("stderr", 0), ("stdout", 0), ("stdout", 6)]


def test_inquiries_are_published_when_asked_answered_and_timed_out(world):
    from apps.inquiries import services as inquiries
    from apps.inquiries.models import Inquiry
    from tests.factories import ActionFactory, ExecutionFactory, runtime

    ask_action = ActionFactory(pack=world["executions"]["beta"].action.pack, name="ask", runner_type=runtime("inquiry"))
    answered_execution = ExecutionFactory(action=ask_action, status="pending", parameters={})
    expired_execution = ExecutionFactory(action=ask_action, status="pending", parameters={})
    topic = f"execution:{answered_execution.pk}"
    admin = world["users"]["admin"]
    token = jwt_for(admin)

    @database_sync_to_async
    def ask(execution):  # as the inquiry runner does
        return Inquiry.objects.create(execution_id=execution.pk, prompt="Deploy?", assignees=["admin"],
                                      timeout_at=timezone.now() + timedelta(hours=1))

    @database_sync_to_async
    def answer(inquiry):
        inquiries.respond(inquiry, admin, {"continue": True})

    @database_sync_to_async
    def time_out(inquiry):
        Inquiry.objects.filter(pk=inquiry.pk).update(timeout_at=timezone.now() - timedelta(seconds=1))
        assert inquiries.expire_due() == 1

    async def scenario():
        ws = await connect(f"/ws/?token={token}")
        await receive(ws)
        reply = await subscribe(ws, [topic, "inquiries"])
        assert reply["topics"] == [topic, "inquiries"]
        await receive(ws)  # snapshot
        inquiry = await ask(answered_execution)
        on_execution, on_inquiries = await receive(ws), await receive(ws)
        assert on_execution["topic"] == topic and on_inquiries["topic"] == "inquiries"
        for message in (on_execution, on_inquiries):
            assert message["type"] == "inquiry" and message["id"] == inquiry.pk and message["status"] == "pending"
            assert message["execution"] == answered_execution.pk and message["prompt"] == "Deploy?"
            assert message["pack_ref"] == "beta" and message["assignees"] == ["admin"] and message["timeout_at"]
        await answer(inquiry)
        ended, answered, listed = await receive(ws), await receive(ws), await receive(ws)
        assert (ended["type"], ended["topic"], ended["status"]) == ("status", topic, "succeeded")
        assert (answered["type"], answered["topic"], answered["status"]) == ("inquiry", topic, "responded")
        assert answered["responded_by"] == "admin" and answered["responded_at"] and "response" not in answered
        assert (listed["topic"], listed["status"], listed["seq"]) == ("inquiries", "responded", on_inquiries["seq"] + 1)

        other = await ask(expired_execution)
        assert (await receive(ws))["id"] == other.pk  # "inquiries": pending
        await time_out(other)
        expired = await receive(ws)
        assert (expired["topic"], expired["id"], expired["status"]) == ("inquiries", other.pk, "timeout")
        await ws.disconnect()

        ws = await connect(f"/ws/?token={token}")  # a new subscriber's snapshot holds the inquiry
        await receive(ws)
        await subscribe(ws, [topic])
        snapshot = await receive(ws)
        assert snapshot["status"] == "succeeded" and snapshot["inquiry"]["status"] == "responded"
        await ws.disconnect()

    run(scenario())


def test_workflow_tasks_are_published(world):
    from django.db.models import F

    from apps.workflows.models import TaskExecution, WorkflowExecution

    execution = world["executions"]["beta"]
    Execution.objects.filter(pk=execution.pk).update(status="running")
    topic = f"execution:{execution.pk}"
    token = jwt_for(world["users"]["admin"])

    @database_sync_to_async
    def run_task():
        wf = WorkflowExecution.objects.create(execution_id=execution.pk, definition={})
        task = TaskExecution.objects.create(workflow_execution=wf, task_name="build", status="ready")  # post_save
        TaskExecution.objects.filter(pk=task.pk).update(status="running", items_total=3, items_done=F("items_done") + 2)
        task.status, task.items_total, task.items_done = "running", 3, F("items_done") + 2  # as a caller might
        services.task_changed(task)
        return task

    async def scenario():
        ws = await connect(f"/ws/?token={token}")
        await receive(ws)
        await subscribe(ws, [topic])
        await receive(ws)  # snapshot
        task = await run_task()
        created, changed = await receive(ws), await receive(ws)
        assert (created["type"], created["id"], created["task"], created["status"]) == ("task", task.pk, "build", "ready")
        assert created["execution"] == execution.pk and created["seq"] + 1 == changed["seq"]
        assert (changed["status"], changed["items_total"], changed["items_done"]) == ("running", 3, 2)
        await ws.disconnect()

        ws = await connect(f"/ws/?token={token}")  # a new subscriber's snapshot holds the tasks
        await receive(ws)
        await subscribe(ws, [topic])
        snapshot = await receive(ws)
        assert [(t["task"], t["status"], t["items_done"]) for t in snapshot["tasks"]] == [("build", "running", 2)]
        assert snapshot["status"] == "running" and "inquiry" not in snapshot
        await ws.disconnect()

    run(scenario())


def test_a_broken_transport_never_breaks_a_status_change(world, monkeypatch):
    from apps.notifications import transport

    def boom(*args, **kwargs):
        raise ConnectionError("redis is down")

    execution = world["executions"]["alpha"]
    monkeypatch.setattr(type(transport.get_transport()), "send", boom)
    assert transition(execution, to="scheduled")
    assert Execution.objects.get(pk=execution.pk).status == "scheduled"
