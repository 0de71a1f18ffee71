"""Conductor smoke tests with hand-normalised definitions (the language module has its own tests)."""
from __future__ import annotations

import time

import pytest

from apps.actions.models import Action
from apps.core.statuses import TERMINAL
from apps.executions import services
from apps.executions.models import Execution
from apps.packs.models import Runtime
from apps.packs.registrar import register_pack
from apps.packs.runtimes import sync_builtin_runtimes
from apps.workflows import sweep
from apps.workflows.models import TaskExecution, WorkflowDefinition
from tests.executions.conftest import ROOT


def task(name, action="core.noop", **kw):
    t = {"name": name, "action": action, "input": {}, "when": None, "join": None, "with_items": None,
         "concurrency": None, "batch_size": None, "retry": None, "timeout": None, "next": []}
    t.update(kw)
    return t


def definition(tasks, entry, vars=None, output=None):
    return {"version": 1.0, "vars": vars or {}, "output": output, "order": [t["name"] for t in tasks],
            "entry": entry, "tasks": {t["name"]: t for t in tasks}}


def wf_action(name, body, parameters=None):
    core = Action.objects.get(ref="core.noop").pack
    action = Action.objects.create(pack=core, name=name, runner_type=Runtime.objects.get(name="workflow"),
                                   entry_point=f"workflows/{name}.yaml", parameters=parameters or {})
    WorkflowDefinition.objects.create(action=action, definition=body)
    return action


def run(action, parameters=None, timeout=30):
    execution = services.create_execution(action, parameters or {})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        execution.refresh_from_db()
        if execution.status in TERMINAL:
            return execution
        sweep.sweep()
        time.sleep(0.05)
    raise AssertionError(f"workflow still {execution.status}: {list(TaskExecution.objects.values_list('task_name', 'status'))}")


@pytest.fixture
def core(transactional_db, worker):
    sync_builtin_runtimes()
    register_pack(ROOT / "packs" / "core")


def test_sequence_publish_output(core):
    body = definition([
        task("a", "core.echo", input={"message": "hi {{ parameters.who }}"},
             next=[{"when": "{{ succeeded() }}", "publish": {"said": "{{ result().stdout | trim }}"}, "do": ["b"]}]),
        task("b", next=[{"when": None, "publish": {}, "do": ["c"]}]),
        task("c", "core.echo", input={"message": "{{ vars.said }}!"}),
    ], ["a"], output={"said": "{{ vars.said }}", "c": "{{ tasks.c.result.stdout | trim }}"})
    action = wf_action("seq", body, {"who": {"type": "string", "default": "bob"}})
    execution = run(action)
    assert execution.status == "succeeded", execution.result
    assert execution.result == {"output": {"said": "hi bob", "c": "hi bob!"}, "errors": []}
    assert list(TaskExecution.objects.order_by("id").values_list("task_name", "status")) == [
        ("a", "succeeded"), ("b", "succeeded"), ("c", "succeeded")]


def test_with_items_concurrency_and_order(core):
    body = definition([
        task("each", "core.echo", input={"message": "{{ index }}:{{ item }}"}, with_items="{{ parameters.xs }}",
             concurrency=3),
    ], ["each"], output={"n": "{{ tasks.each.result | length }}",
                         "first": "{{ (tasks.each.result | first).stdout | trim }}"})
    action = wf_action("items", body, {"xs": {"type": "array"}})
    execution = run(action, {"xs": list(range(12))})
    assert execution.status == "succeeded", execution.result
    assert execution.result["output"] == {"n": 12, "first": "0:0"}
    children = Execution.objects.filter(parent=execution).order_by("item_index")
    assert [c.item_index for c in children] == list(range(12))


def test_unhandled_failure_fails_and_join(core):
    body = definition([
        task("a", next=[{"when": None, "publish": {}, "do": ["b", "c"]}]),
        task("b", next=[{"when": None, "publish": {}, "do": ["d"]}]),
        task("c", "core.local", input={"cmd": "exit 3"}, next=[{"when": "{{ succeeded() }}", "publish": {}, "do": ["d"]}]),
        task("d", join="all"),
    ], ["a"])
    execution = run(wf_action("joinfail", body))
    assert execution.status == "failed"
    assert execution.result["errors"][0]["task"] == "c"
    assert not TaskExecution.objects.filter(task_name="d", status="succeeded").exists()


def test_task_changes_are_notified(core, monkeypatch):
    """Task rows change with QuerySet.update(): the conductor publishes each change itself."""
    import threading

    from apps.notifications import services as notifications

    seen, lock = [], threading.Lock()

    def record(te):
        with lock:
            seen.append((te.task_name, te.status, te.items_done))

    monkeypatch.setattr(notifications, "task_changed", record)
    body = definition([
        task("a", next=[{"when": None, "publish": {}, "do": ["each"]}]),
        task("each", "core.noop", with_items="{{ [1, 2, 3] }}", concurrency=1),
    ], ["a"])
    assert run(wf_action("notified", body)).status == "succeeded"
    assert ("a", "running", 0) in seen and ("a", "succeeded", 0) in seen
    progress = [done for name, status, done in seen if name == "each" and status == "running"]
    assert progress[-3:] == [1, 2, 3]  # one message per item (a task of <= 100 items)
    assert seen[-1][:2] == ("each", "succeeded")
