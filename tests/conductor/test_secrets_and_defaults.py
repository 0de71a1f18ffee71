"""Secrets stay secret through a workflow (kv keys in task inputs, the rendered output); input defaults;
a workflow action's own timeout; re-run with `from_task` (SPEC §11)."""
from __future__ import annotations

from apps.actions.models import Action
from apps.executions.models import Execution
from apps.keys.models import Key
from apps.keys.services import apply_value
from apps.workflows.models import TaskExecution, WorkflowVariable

from .test_api import wait_status
from .test_smoke import definition, run, task, wf_action

SECRET = "s3cr3t-kv-value"


def test_a_secret_key_read_in_a_task_input_is_redacted_everywhere(core):
    key = Key(name="api_token")
    apply_value(key, SECRET, secret=True)
    key.save()
    body = definition([
        task("call", "core.echo", input={"message": "token is {{ kv.system.api_token }}"},
             next=[{"when": "{{ succeeded() }}", "publish": {"said": "{{ result().stdout }}"}, "do": []}]),
    ], ["call"], output={"said": "{{ vars.said }}", "direct": "{{ kv.system.api_token }}"})
    execution = run(wf_action("kvsecret", body))
    assert execution.status == "succeeded", execution.result
    child = Execution.objects.get(parent=execution)
    stored = [child.parameters, child.result, execution.result,
              list(TaskExecution.objects.values_list("input", "result", "published")),
              list(WorkflowVariable.objects.values_list("value", flat=True))]
    assert SECRET not in str(stored)
    assert child.parameters == {"message": "********"}
    # the child's whole `message` was secret (it contained the key), so its output masks all of it
    assert execution.result["output"] == {"said": "********\n", "direct": "********"}


def test_secret_parameters_are_masked_in_the_output(core):
    body = definition([task("a")], ["a"], output={"header": "Bearer {{ parameters.token }}"})
    action = wf_action("outsecret", body, {"token": {"type": "string", "secret": True}})
    execution = run(action, {"token": "hunter2-xyz"})
    assert execution.result["output"] == {"header": "Bearer ********"}


def test_input_defaults_apply_to_missing_parameters(core):
    body = definition([task("a", "core.echo", input={"message": "{{ parameters.region }}"})], ["a"],
                      output={"region": "{{ parameters.region }}"})
    body["input"], body["input_defaults"] = ["region"], {"region": "us-east"}
    action = wf_action("defaults", body, {"region": {"type": "string"}})
    assert run(action).result["output"] == {"region": "us-east"}
    assert run(action, {"region": "eu-west"}).result["output"] == {"region": "eu-west"}


def test_the_workflow_actions_own_timeout_applies(core):
    body = definition([task("nap", "core.sleep", input={"seconds": 30})], ["nap"])
    action = wf_action("slowpoke", body)
    Action.objects.filter(pk=action.pk).update(timeout=1)
    execution = run(action, timeout=30)
    assert execution.status == "timeout" and execution.timeout == 1
    assert "timed out after 1 s" in str(execution.result["errors"])


def test_rerun_from_task_as_the_spec_names_it(core, admin_api):
    body = definition([
        task("build", next=[{"when": None, "publish": {"v": 7}, "do": ["ship"]}]),
        task("ship", "core.echo", input={"message": "v={{ vars.v }}"}),
    ], ["build"])
    first = run(wf_action("pipeline", body))
    assert first.status == "succeeded", first.result
    response = admin_api.post(f"/api/v1/executions/{first.pk}/rerun", {"from_task": "ship"}, format="json")
    assert response.status_code == 201, response.content

    done = wait_status(admin_api, response.json()["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded"
    names = list(TaskExecution.objects.filter(workflow_execution__execution_id=done["id"]).order_by("id")
                 .values_list("task_name", "error"))
    assert names == [("build", "copied from the original"), ("ship", "")]
    bad = admin_api.post(f"/api/v1/executions/{first.pk}/rerun", {"from_task": "nope"}, format="json")
    assert bad.status_code == 400 and "nope" in bad.json()["tasks"][0]
