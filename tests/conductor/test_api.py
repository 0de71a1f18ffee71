"""Workflow operations and visibility over HTTP: pause / resume / re-run from a task / graph / tasks / context."""
from __future__ import annotations

import time

from apps.core.statuses import TERMINAL
from apps.workflows.models import TaskExecution

from .test_smoke import definition, task, wf_action


def wait_status(api, execution_id, statuses, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = api.get(f"/api/v1/executions/{execution_id}").json()
        if body["status"] in statuses:
            return body
        from apps.workflows import sweep

        sweep.sweep()
        time.sleep(0.05)
    raise AssertionError(f"execution {execution_id} still {body['status']}")


def chain_with_sleep():
    return definition([
        task("first", "core.sleep", input={"seconds": 1}, next=[{"when": None, "publish": {"x": 1}, "do": ["second"]}]),
        task("second", "core.echo", input={"message": "x={{ vars.x }} t={{ parameters.token }}"},
             next=[{"when": "{{ succeeded() }}", "publish": {"token_seen": "{{ parameters.token }}"}, "do": []}]),
    ], ["first"], output={"x": "{{ vars.x }}"})


def test_pause_resume_and_visibility(core, admin_api, viewer_api):
    action = wf_action("pausable", chain_with_sleep(), {"token": {"type": "string", "secret": True}})
    response = admin_api.post(f"/api/v1/actions/{action.ref}/execute", {"parameters": {"token": "s3cr3t-value"}},
                              format="json")
    assert response.status_code == 201, response.content
    execution_id = response.json()["id"]
    wait_status(admin_api, execution_id, {"running"})
    while not TaskExecution.objects.filter(task_name="first", status="running").exists():
        time.sleep(0.02)
    assert viewer_api.post(f"/api/v1/executions/{execution_id}/pause").status_code == 403
    paused = admin_api.post(f"/api/v1/executions/{execution_id}/pause")
    assert paused.status_code == 200 and paused.json()["status"] in ("pausing", "paused")
    assert admin_api.post(f"/api/v1/executions/{execution_id}/pause").status_code == 409
    wait_status(admin_api, execution_id, {"paused"})
    # the running task finished; the next one was held back
    assert list(TaskExecution.objects.order_by("id").values_list("task_name", "status")) == [
        ("first", "succeeded"), ("second", "ready")]
    graph = admin_api.get(f"/api/v1/executions/{execution_id}/graph").json()
    assert [(n["id"], n["status"]) for n in graph["nodes"]] == [("first", "succeeded"), ("second", "ready")]
    assert graph["edges"] == [{"from": "first", "to": "second", "when": None, "index": 0, "publish": ["x"],
                               "command": False}]
    assert admin_api.post(f"/api/v1/executions/{execution_id}/resume").status_code == 200
    done = wait_status(admin_api, execution_id, TERMINAL)
    assert done["status"] == "succeeded" and done["result"] == {"output": {"x": 1}, "errors": []}

    tasks = admin_api.get(f"/api/v1/executions/{execution_id}/tasks").json()["results"]
    assert [(t["task"], t["status"]) for t in tasks] == [("first", "succeeded"), ("second", "succeeded")]
    assert "s3cr3t-value" not in str(tasks)  # the child's input is stored redacted, published secrets too
    assert tasks[1]["published"] == {"token_seen": "********"}
    context = admin_api.get(f"/api/v1/executions/{execution_id}/context").json()
    assert context["vars"] == {"x": 1, "token_seen": "********"}
    assert "s3cr3t-value" not in str(context)
    dot = admin_api.get(f"/api/v1/executions/{execution_id}/graph?format=dot")
    assert dot.status_code == 200 and dot["Content-Type"].startswith("text/vnd.graphviz")
    text = dot.content.decode()
    assert text.startswith("digraph") and '"first" -> "second"' in text

    # re-run from `second`: `first` is not run again, its published var is kept
    rerun = admin_api.post(f"/api/v1/executions/{execution_id}/rerun", {"tasks": ["second"]}, format="json")
    assert rerun.status_code == 201, rerun.content
    again = wait_status(admin_api, rerun.json()["id"], TERMINAL)
    assert again["status"] == "succeeded" and again["result"]["output"] == {"x": 1}
    new_runs = TaskExecution.objects.filter(workflow_execution__execution_id=again["id"]).order_by("id")
    assert [(t.task_name, t.error) for t in new_runs] == [("first", "copied from the original"), ("second", "")]
    bad = admin_api.post(f"/api/v1/executions/{execution_id}/rerun", {"tasks": ["nope"]}, format="json")
    assert bad.status_code == 400 and "nope" in str(bad.json())


def test_operations_on_a_plain_execution_are_conflicts(core, admin_api):
    from apps.actions.models import Action
    from apps.executions import services

    execution = services.create_execution(Action.objects.get(ref="core.noop"), {})
    assert admin_api.post(f"/api/v1/executions/{execution.pk}/pause").status_code == 409
    assert admin_api.get(f"/api/v1/executions/{execution.pk}/graph").status_code == 404
