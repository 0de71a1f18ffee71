"""The workflow language (SPEC §7): normalisation, validation, POST /api/v1/workflows/validate, registration."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from rest_framework.test import APIClient

from apps.accounts.models import PermissionAssignment, PermissionSet
from apps.actions.models import Action
from apps.packs.models import Pack
from apps.packs.registrar import PackError, register_pack
from apps.workflows.language import normalize, validate
from apps.workflows.models import WorkflowDefinition
from tests.executions.conftest import write
from tests.factories import ActionFactory, PackFactory, UserFactory

PACKS = Path(__file__).resolve().parent.parent.parent / "packs"
URL = "/api/v1/workflows/validate"

# Stand-ins for Action rows: ref → parameters.
ACTIONS = {
    "core.noop": {},
    "core.echo": {"message": {"type": "string", "required": True}},
    "core.local": {"cmd": {"type": "string", "required": True}},
    "ops.deploy": {"host": {"type": "string", "required": True}, "dry_run": {"type": "boolean", "required": True,
                                                                             "default": False}},
}


def lookup(ref):
    return SimpleNamespace(ref=ref, parameters=ACTIONS[ref]) if ref in ACTIONS else None


def task(name, action="core.noop", **fields):
    return {"name": name, "action": action, **fields}


def wf(*tasks, **top):
    return {"version": 1.0, **top, "tasks": list(tasks)}


# ----------------------------------------------------------------------------------------------------------------
# Normalisation
# ----------------------------------------------------------------------------------------------------------------

DEFAULT_TASK = {"name": "a", "action": "core.noop", "input": {}, "when": None, "join": None, "with_items": None,
                "concurrency": None, "batch_size": None, "retry": None, "timeout": None, "next": []}


def test_minimal_workflow_gets_every_default():
    assert normalize({"tasks": [{"name": "a", "action": "core.noop"}]}) == {
        "version": 1.0, "input": [], "input_defaults": {}, "vars": {}, "output": None, "order": ["a"], "entry": ["a"],
        "tasks": {"a": DEFAULT_TASK},
    }


SUCCEEDED, FAILED, TIMED_OUT = "{{ succeeded() }}", "{{ failed() }}", "{{ timed_out() }}"

NORMALISE_TASK_CASES = [
    # (id, task fields, expected subset of the normalised task)
    ("do-string", {"next": [{"do": "b"}]}, {"next": [{"when": None, "publish": {}, "do": ["b"]}]}),
    ("do-comma-string", {"next": [{"do": "b, c"}]}, {"next": [{"when": None, "publish": {}, "do": ["b", "c"]}]}),
    ("do-list", {"next": [{"when": SUCCEEDED, "do": ["b", "c"]}]},
     {"next": [{"when": SUCCEEDED, "publish": {}, "do": ["b", "c"]}]}),
    ("do-absent", {"next": [{"when": FAILED}]}, {"next": [{"when": FAILED, "publish": {}, "do": []}]}),
    ("engine-commands", {"next": [{"when": FAILED, "do": ["noop"]}, {"do": "fail"}]},
     {"next": [{"when": FAILED, "publish": {}, "do": ["noop"]}, {"when": None, "publish": {}, "do": ["fail"]}]}),
    ("publish-mapping", {"next": [{"publish": {"x": "{{ result() }}"}, "do": "b"}]},
     {"next": [{"when": None, "publish": {"x": "{{ result() }}"}, "do": ["b"]}]}),
    ("publish-orquesta-list", {"next": [{"publish": [{"x": 1}, {"y": "{{ result() }}"}]}]},
     {"next": [{"when": None, "publish": {"x": 1, "y": "{{ result() }}"}, "do": []}]}),
    ("task-level-publish", {"publish": [{"x": "{{ result() }}"}]},
     {"next": [{"when": SUCCEEDED, "publish": {"x": "{{ result() }}"}, "do": []}]}),
    ("shorthands-after-next-in-order", {
        "on_timeout": ["e"], "on_complete": "d", "on_failure": ["c"], "on_success": "b, f", "publish": {"p": 1},
        "next": [{"when": "{{ completed() }}", "do": ["g"]}]},
     {"next": [{"when": "{{ completed() }}", "publish": {}, "do": ["g"]},
               {"when": SUCCEEDED, "publish": {"p": 1}, "do": []},
               {"when": SUCCEEDED, "publish": {}, "do": ["b", "f"]},
               {"when": FAILED, "publish": {}, "do": ["c"]},
               {"when": None, "publish": {}, "do": ["d"]},
               {"when": TIMED_OUT, "publish": {}, "do": ["e"]}]}),
    ("retry-defaults", {"retry": {"count": 3}},
     {"retry": {"count": 3, "delay": 0.0, "backoff": "constant", "max_delay": None, "when": None}}),
    ("retry-full", {"retry": {"count": 2, "delay": 2, "backoff": "exponential", "max_delay": 30, "when": FAILED}},
     {"retry": {"count": 2, "delay": 2.0, "backoff": "exponential", "max_delay": 30.0, "when": FAILED}}),
    ("with-items", {"with_items": "{{ parameters.hosts }}", "concurrency": 2, "batch_size": 10},
     {"with_items": "{{ parameters.hosts }}", "concurrency": 2, "batch_size": 10}),
    ("with-items-list", {"with_items": [1, 2]}, {"with_items": [1, 2]}),
    ("join-all", {"join": "all"}, {"join": "all"}),
    ("join-int", {"join": 2}, {"join": 2}),
    ("when-and-timeout", {"when": "{{ parameters.go }}", "timeout": 30}, {"when": "{{ parameters.go }}", "timeout": 30}),
    ("when-boolean", {"when": False}, {"when": "false"}),
    ("input", {"input": {"message": "{{ vars.x }}"}}, {"input": {"message": "{{ vars.x }}"}}),
]


@pytest.mark.parametrize("fields,expected", [c[1:] for c in NORMALISE_TASK_CASES], ids=[c[0] for c in NORMALISE_TASK_CASES])
def test_normalise_task(fields, expected):
    normalised = normalize(wf(task("a", **fields)))["tasks"]["a"]
    assert normalised == {**DEFAULT_TASK, **expected}


def test_mapping_form_keeps_written_order_and_entry_tasks_are_the_untargeted_ones():
    body = {"tasks": {
        "zeta": {"action": "core.noop", "on_success": ["beta"]},
        "alpha": {"action": "core.noop", "next": [{"do": "beta, gamma"}]},
        "beta": {"action": "core.noop", "next": [{"do": ["beta"]}]},  # a loop does not make it an entry
        "gamma": {"action": "core.noop"},
        "delta": {"action": "core.noop"},
    }}
    normalised = normalize(body)
    assert normalised["order"] == ["zeta", "alpha", "beta", "gamma", "delta"]
    assert normalised["entry"] == ["zeta", "alpha", "delta"]
    assert normalised["tasks"]["zeta"]["name"] == "zeta"


@pytest.mark.parametrize("body,expected", [
    ({"input": ["a", {"b": 1}], "tasks": []}, {"input": ["a", "b"]}),
    ({"input": {"a": None, "b": 2}, "tasks": []}, {"input": ["a", "b"]}),
    ({"vars": {"n": 1}, "output": {"o": "{{ vars.n }}"}, "tasks": []}, {"vars": {"n": 1}, "output": {"o": "{{ vars.n }}"}}),
    ({"vars": [{"n": 1}, {"m": 2}], "output": [{"o": 1}], "tasks": []}, {"vars": {"n": 1, "m": 2}, "output": {"o": 1}}),
    ({"version": "1.0", "tasks": []}, {"version": 1.0, "vars": {}, "output": None, "input": []}),
], ids=["input-list", "input-mapping", "vars-output", "orquesta-lists", "version-string"])
def test_normalise_top_level(body, expected):
    normalised = normalize(body)
    assert {k: normalised[k] for k in expected} == expected


@pytest.mark.parametrize("body", [
    None, [], "text", {}, {"tasks": "x"}, {"tasks": [1, {"name": 2}, {"action": "x"}, {"name": "a", "next": "b"}]},
    {"tasks": [{"name": "a", "next": [1, {"do": 3}], "retry": "x", "join": [], "publish": "p", "on_success": 5,
                "input": "x", "with_items": 4, "concurrency": "2"}]},
    {"tasks": {"a": None, "b": {"next": [{"publish": ["x", {"y": 1}]}]}}, "vars": "v", "output": 3},
    {"tasks": [{"name": "fail", "action": "core.noop"}, {"name": "a", "action": "core.noop"}, {"name": "a"}]},
])
def test_normalise_never_raises_on_malformed_bodies(body):
    normalised = normalize(body)
    assert set(normalised) == {"version", "input", "input_defaults", "vars", "output", "order", "entry", "tasks"}
    assert list(normalised["tasks"]) == normalised["order"]
    assert "fail" not in normalised["tasks"]  # engine commands are never tasks
    json.dumps(normalised)


# ----------------------------------------------------------------------------------------------------------------
# Validation: one case per check
# ----------------------------------------------------------------------------------------------------------------

def echo(name, message="hi", **fields):
    return task(name, "core.echo", input={"message": message}, **fields)


VALIDATION_CASES = [
    # (id, body, (task, field, message fragment))
    ("not-a-mapping", ["a"], (None, "(root)", "must be a mapping")),
    ("tasks-missing", {"version": 1.0}, (None, "tasks", "required")),
    ("tasks-wrong-type", {"tasks": "a"}, (None, "tasks", "must be a list of tasks")),
    ("tasks-empty", {"tasks": []}, (None, "tasks", "at least one task")),
    ("unknown-top-level-key", wf(task("a"), outputs={}), (None, "outputs", "did you mean 'output'")),
    ("version", {"version": 2, "tasks": [task("a")]}, (None, "version", "unsupported version 2")),
    ("task-not-a-mapping", {"tasks": [task("a"), "b"]}, (None, "tasks[1]", "must be a mapping")),
    ("name-missing", {"tasks": [task("a"), {"action": "core.noop"}]}, (None, "tasks[1].name", "required")),
    ("name-not-a-string", {"tasks": [task("a"), task(5)]}, (None, "tasks[1].name", "must be a string")),
    ("name-invalid", wf(task("a"), task("b c")), ("b c", "tasks[1].name", "not a valid task name")),
    ("name-reserved", wf(task("a"), task("fail")), ("fail", "tasks[1].name", "engine command")),
    ("name-duplicate", wf(task("a"), task("a")), ("a", "tasks[1].name", "duplicate task name 'a' (first defined at tasks[0])")),
    ("mapping-form-name-mismatch", {"tasks": {"a": {"name": "b", "action": "core.noop"}}},
     ("a", "tasks.a.name", "differs from the task's key")),
    ("unknown-task-key", wf(task("a", with_item="{{ [1] }}")), ("a", "tasks.a.with_item", "did you mean 'with_items'")),
    ("unknown-transition-key", wf(task("a", next=[{"then": "b"}])), ("a", "tasks.a.next[0].then", "unknown key 'then'")),
    ("action-missing", wf({"name": "a"}), ("a", "tasks.a.action", "required")),
    ("action-bad-ref", wf(task("a", "Core.Noop")), ("a", "tasks.a.action", "not a valid action ref")),
    ("action-unknown", wf(task("a", "core.nope")), ("a", "tasks.a.action", "no action 'core.nope'")),
    ("do-unknown-task", wf(task("a", next=[{"do": ["b"]}]), task("b", next=[{"do": ["a", "c"]}])),
     ("b", "tasks.b.next[0].do[1]", "'c' is not a task of this workflow")),
    ("do-comma-string-unknown", wf(task("a", next=[{"do": "a, x"}]), task("b")),
     ("a", "tasks.a.next[0].do", "'x' is not a task")),
    ("do-not-a-name", wf(task("a", next=[{"do": [3]}])), ("a", "tasks.a.next[0].do[0]", "must be a task name")),
    ("shorthand-unknown-task", wf(task("a", on_failure=["notifi"]), task("notify")),
     ("a", "tasks.a.on_failure[0]", "did you mean 'notify'")),
    ("next-not-a-list", wf(task("a", next={"do": "b"})), ("a", "tasks.a.next", "must be a list of transitions")),
    ("transition-not-a-mapping", wf(task("a", next=["b"])), ("a", "tasks.a.next[0]", "must be a mapping")),
    ("jinja-syntax-input", wf(echo("a", "{{ vars.x ")), ("a", "tasks.a.input.message", "syntax error")),
    ("jinja-syntax-nested-input", wf(task("a", "ops.deploy", input={"host": "h", "dry_run": ["{% if %}"]})),
     ("a", "tasks.a.input.dry_run[0]", "syntax error")),
    ("jinja-unknown-filter", wf(echo("a", "{{ parameters.x | nosuch }}")), ("a", "tasks.a.input.message", "nosuch")),
    ("jinja-syntax-when", wf(task("a", when="{{ parameters.x == }}")), ("a", "tasks.a.when", "syntax error")),
    ("jinja-syntax-bare-when", wf(task("a", when="succeeded( and")), ("a", "tasks.a.when", "syntax error")),
    ("jinja-syntax-transition-when", wf(task("a", next=[{"when": "{{ succeeded() and }}"}])),
     ("a", "tasks.a.next[0].when", "syntax error")),
    ("jinja-syntax-publish", wf(task("a", next=[{"publish": {"x": "{{ result( }}"}}])),
     ("a", "tasks.a.next[0].publish.x", "syntax error")),
    ("jinja-syntax-task-publish", wf(task("a", publish=[{"x": "{{ 1 + }}"}])), ("a", "tasks.a.publish.x", "syntax error")),
    ("jinja-syntax-with-items", wf(task("a", with_items="{{ [1, }}")), ("a", "tasks.a.with_items", "syntax error")),
    ("jinja-syntax-retry-when", wf(task("a", retry={"count": 1, "when": "{{ ) }}"})),
     ("a", "tasks.a.retry.when", "syntax error")),
    ("jinja-syntax-vars", wf(task("a"), vars={"x": "{{ 1 +* 2 }}"}), (None, "vars.x", "syntax error")),
    ("jinja-syntax-output", wf(task("a"), output={"o": "{% for %}"}), (None, "output.o", "syntax error")),
    ("jinja-syntax-mixed-template", wf(echo("a", "a {{ 1 }} b {{ ( }}")), ("a", "tasks.a.input.message", "syntax error")),
    ("unknown-name", wf(echo("a", "{{ param.x }}")), ("a", "tasks.a.input.message", "unknown name 'param'")),
    ("unknown-function", wf(task("a", next=[{"when": "{{ succeded() }}"}])),
     ("a", "tasks.a.next[0].when", "did you mean 'succeeded'")),
    ("item-outside-with-items", wf(echo("a", "{{ item }}")), ("a", "tasks.a.input.message", "'item' is not defined here")),
    ("item-outside-input", wf(echo("a", "{{ item }}", with_items=[1], next=[{"publish": {"x": "{{ index }}"}}])),
     ("a", "tasks.a.next[0].publish.x", "'index' is not defined here")),
    ("item-in-a-batch", wf(echo("a", "{{ item }}", with_items=[1], batch_size=2)),
     ("a", "tasks.a.input.message", "'item' is not defined here")),
    ("items-without-batch", wf(echo("a", "{{ items }}", with_items=[1])), ("a", "tasks.a.input.message", "'items' is not")),
    ("item-in-with-items-expression", wf(task("a", with_items="{{ [item] }}")), ("a", "tasks.a.with_items", "'item' is not")),
    ("tasks-reference", wf(echo("a", "{{ tasks.fetch.result }}")), ("a", "tasks.a.input.message", "no task 'fetch'")),
    ("tasks-subscript-reference", wf(task("a"), output={"o": "{{ tasks['b'].status }}"}), (None, "output.o", "no task 'b'")),
    ("task-status-reference", wf(task("a", when="task_status('zz') == 'succeeded'")), ("a", "tasks.a.when", "no task 'zz'")),
    ("vars-never-set", wf(echo("a", "{{ vars.hostz }}"), vars={"hosts": []}),
     ("a", "tasks.a.input.message", "variable 'hostz' is never set")),
    ("unreachable-cycle", wf(task("a"), task("b", next=[{"do": "c"}]), task("c", next=[{"do": "b"}])),
     ("b", "tasks.b", "unreachable")),
    ("no-entry-task", wf(task("a", next=[{"do": "b"}]), task("b", next=[{"do": "a"}])), (None, "tasks", "no entry task")),
    ("join-invalid", wf(task("a", on_success=["b"]), task("b", join="some")),
     ("b", "tasks.b.join", "must be 'all' or a positive")),
    ("join-zero", wf(task("a", on_success=["b"]), task("b", join=0)), ("b", "tasks.b.join", "must be 'all' or a positive")),
    ("join-more-than-inbound", wf(task("a", on_success=["b", "c"]), task("b", on_success=["c"]), task("c", join=3)),
     ("c", "tasks.c.join", "waits for 3 inbound tasks but only 2 lead here (a, b)")),
    ("join-on-entry-task", wf(task("a", join="all")), ("a", "tasks.a.join", "no transition leads to")),
    ("with-items-plain-string", wf(task("a", with_items="hosts")), ("a", "tasks.a.with_items", "plain string")),
    ("with-items-wrong-type", wf(task("a", with_items=3)), ("a", "tasks.a.with_items", "must be a {{ expression }} or a list")),
    ("concurrency-not-positive", wf(task("a", with_items=[1], concurrency=0)), ("a", "tasks.a.concurrency", "positive integer")),
    ("concurrency-not-int", wf(task("a", with_items=[1], concurrency="2")), ("a", "tasks.a.concurrency", "positive integer")),
    ("batch-size-not-int", wf(task("a", with_items=[1], batch_size=1.5)), ("a", "tasks.a.batch_size", "positive integer")),
    ("batch-size-needs-with-items", wf(task("a", batch_size=10)), ("a", "tasks.a.batch_size", "requires with_items")),
    ("concurrency-needs-with-items", wf(task("a", concurrency=2)), ("a", "tasks.a.concurrency", "requires with_items")),
    ("retry-not-a-mapping", wf(task("a", retry="3")), ("a", "tasks.a.retry", "must be a mapping")),
    ("retry-count-missing", wf(task("a", retry={"delay": 1})), ("a", "tasks.a.retry.count", "required")),
    ("retry-count-negative", wf(task("a", retry={"count": -1})), ("a", "tasks.a.retry.count", "0 or more")),
    ("retry-delay-negative", wf(task("a", retry={"count": 1, "delay": -2})), ("a", "tasks.a.retry.delay", "0 or more")),
    ("retry-backoff", wf(task("a", retry={"count": 1, "backoff": "cubic"})), ("a", "tasks.a.retry.backoff", "must be one of")),
    ("retry-max-delay-type", wf(task("a", retry={"count": 1, "max_delay": "long"})), ("a", "tasks.a.retry.max_delay", "seconds")),
    ("retry-max-delay-below-delay", wf(task("a", retry={"count": 1, "delay": 10, "max_delay": 5})),
     ("a", "tasks.a.retry.max_delay", "must not be less than delay")),
    ("retry-unknown-key", wf(task("a", retry={"count": 1, "tries": 3})), ("a", "tasks.a.retry.tries", "unknown key")),
    ("timeout-zero", wf(task("a", timeout=0)), ("a", "tasks.a.timeout", "positive number of seconds")),
    ("timeout-string", wf(task("a", timeout="1m")), ("a", "tasks.a.timeout", "positive number of seconds")),
    ("missing-required-input", wf(task("a", "ops.deploy")),
     ("a", "tasks.a.input", "missing required input 'host' of ops.deploy")),
    ("unknown-input", wf(task("a", "core.echo", input={"message": "m", "extra": 1})),
     ("a", "tasks.a.input.extra", "'extra' is not a parameter of core.echo (declared: message)")),
    ("input-to-parameterless-action", wf(task("a", input={"x": 1})), ("a", "tasks.a.input.x", "takes no parameters")),
    ("input-not-a-mapping", wf(task("a", input=["x"])), ("a", "tasks.a.input", "must be a mapping")),
    ("output-not-a-mapping", wf(task("a"), output="{{ vars }}"), (None, "output", "must be a mapping")),
    ("vars-not-a-mapping", wf(task("a"), vars=["x"]), (None, "vars[0]", "single {name: value} mapping")),
    ("publish-bad-name", wf(task("a", publish={"my-var": 1})), ("a", "tasks.a.publish.my-var", "not a valid name")),
    ("input-list-bad-entry", wf(task("a"), input=[3]), (None, "input[0]", "a name or a single")),
]


@pytest.mark.parametrize("body,expected", [c[1:] for c in VALIDATION_CASES], ids=[c[0] for c in VALIDATION_CASES])
def test_each_check_reports_its_task_field_and_message(body, expected):
    errors = validate(copy.deepcopy(body), action_lookup=lookup)
    task_name, field, fragment = expected
    matching = [e for e in errors if e["task"] == task_name and e["field"] == field and fragment in e["message"]]
    assert matching, f"expected {expected} in {errors}"


def test_parameters_are_checked_when_given():
    body = wf(echo("a", "{{ parameters.region }} {{ parameters.zone }}"), input=["region", "zone"])
    assert validate(body, action_lookup=lookup) == []
    errors = validate(body, action_lookup=lookup, parameters={"region": {"type": "string"}})
    assert {(e["field"], e["message"].split(" (")[0].split(";")[0]) for e in errors} == {
        ("input[1]", "'zone' is not a parameter of the workflow action"),
        ("tasks.a.input.message", "no parameter 'zone'"),
    }


def test_without_a_lookup_actions_and_inputs_are_not_checked():
    assert validate(wf(task("a", "other.thing", input={"anything": 1}))) == []


@pytest.mark.parametrize("body", [
    wf(task("a", next=[{"when": "{{ succeeded() and result().ok }}", "publish": {"n": "{{ result().n }}"}, "do": "b"}]),
       echo("b", "{{ vars.n }} {{ tasks.a.result }} {{ task_status('a') }} {{ kv.system.x }} {{ pack.config.y }}"
                 " {{ system.execution_id }} {% for h in vars.l %}{{ h }}{{ loop.index }}{% endfor %}"
                 " {{ vars.get('maybe', 1) }} {{ parameters.get('opt') }} {{ tasks.items() | list }}"),
       vars={"l": [1]}),
    wf(echo("a", "{{ item }} {{ index }}", with_items="{{ range(3) | list }}", concurrency=1),
       echo("b", "{{ items | length }} {{ batch_index }}", with_items=[1, 2, 3], batch_size=2),
       task("c", when=True), task("d", when="completed()"), task("e", retry=2)),
    {"tasks": {"start": {"action": "core.noop", "on_success": "a"}, "a": {"action": "core.noop", "on_complete": "b"},
               "b": {"action": "core.noop", "on_success": ["a"], "on_failure": "fail", "on_timeout": ["noop"]}}},
    wf(task("a", on_success=["b", "c"]), task("b", on_success=["d"]), task("c", on_success=["d"]),
       task("d", join=2, on_success=["e"]), task("e", on_failure=["e"])),  # e retries itself in a loop
], ids=["scopes-and-functions", "items-and-shorthand-forms", "mapping-form-loop", "join-and-self-loop"])
def test_valid_bodies_have_no_errors(body):
    assert validate(body, action_lookup=lookup, parameters={}) == []


SPEC_EXAMPLE = """
version: 1.0
vars: {attempts: 0}
tasks:
  - name: fetch
    action: ops.list_hosts
    input: {region: "{{ parameters.region }}"}
    retry: {count: 3, delay: 2, backoff: exponential, max_delay: 30}   # optional `when` expression
    timeout: 120
    next:
      - when: "{{ succeeded() }}"
        publish: {hosts: "{{ result().data.hosts }}"}
        do: [patch]
      - when: "{{ failed() }}"
        do: [notify]
  - name: patch
    action: ops.patch_host
    with_items: "{{ vars.hosts }}"          # one child execution per item (`item`, `index` in templates)
    concurrency: 10                         # at most 10 in flight; default: all
    input: {host: "{{ item }}"}
    next: [{when: "{{ succeeded() }}", do: [approve]}]
  - name: approve
    action: core.ask
    input: {prompt: "Reboot {{ vars.hosts | length }} hosts?", schema: {type: object, properties: {ok: {type: boolean}}}}
    next: [{when: "{{ succeeded() and result().response.ok }}", do: [reboot]}]
  - name: reboot
    action: ops.reboot
    with_items: "{{ vars.hosts }}"
  - name: notify
    action: core.echo
    input: {message: "failed: {{ tasks.fetch.result.stderr }}"}
output:
  patched: "{{ vars.hosts | length }}"
"""  # SPEC.md §7, verbatim


def test_the_spec_example_is_valid():
    body = yaml.safe_load(SPEC_EXAMPLE)
    assert validate(body, parameters={"region": {"type": "string"}}) == []
    assert normalize(body)["entry"] == ["fetch"]


def test_every_error_is_reported_at_once():
    body = {
        "version": 1.0,
        "vars": {"count": "{{ 1 + }}"},
        "tasks": [
            {"name": "fetch", "action": "ops.deploy", "input": {"dry_run": "{{ parameters.dry }}"}, "retries": 3,
             "next": [{"when": "{{ succeeded() }}", "do": ["patch", "pach"]}]},
            {"name": "patch", "action": "core.echo", "input": {"message": "{{ tasks.fetsh.result }}"},
             "concurrency": 0, "timeout": -5, "join": 4},
            {"name": "fetch", "action": "core.noop"},
            {"name": "orphan", "action": "core.gone", "on_success": ["orphan2"]},
            {"name": "orphan2", "action": "core.noop", "on_success": ["orphan"]},
        ],
        "output": ["not", "pairs"],
    }
    errors = validate(body, action_lookup=lookup)
    got = {(e["task"], e["field"]) for e in errors}
    assert got == {
        (None, "vars.count"),                      # syntax
        ("fetch", "tasks.fetch.retries"),          # unknown key
        ("fetch", "tasks.fetch.input"),            # missing required host
        ("fetch", "tasks.fetch.next[0].do[1]"),    # unknown task pach
        ("patch", "tasks.patch.input.message"),    # tasks.fetsh
        ("patch", "tasks.patch.concurrency"),
        ("patch", "tasks.patch.timeout"),
        ("patch", "tasks.patch.join"),             # 4 > 1 inbound
        ("fetch", "tasks[2].name"),                # duplicate
        ("orphan", "tasks.orphan.action"),         # no such action
        ("orphan", "tasks.orphan"),                # unreachable
        ("orphan2", "tasks.orphan2"),              # unreachable
        (None, "output[0]"), (None, "output[1]"),  # not {name: value}
    }, json.dumps(errors, indent=1)
    assert all(set(e) == {"task", "field", "message"} and e["message"] for e in errors)


# ----------------------------------------------------------------------------------------------------------------
# The example pack
# ----------------------------------------------------------------------------------------------------------------

def _core_lookup():
    actions = {}
    for pack in ("core", "examples"):  # examples may nest each other
        for path in (PACKS / pack / "actions").glob("*.yaml"):
            data = yaml.safe_load(path.read_text())
            ref = f"{pack}.{data['name']}"
            actions[ref] = SimpleNamespace(ref=ref, parameters=data.get("parameters") or {})
    return actions.get


EXAMPLES = sorted(p.stem for p in (PACKS / "examples" / "actions").glob("*.yaml"))


def test_the_example_pack_has_every_workflow_it_promises():
    assert {"decision", "parallel_join", "retry", "sequence", "spec_example", "with_items"} <= set(EXAMPLES)


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_workflows_are_valid(name):
    action = yaml.safe_load((PACKS / "examples" / "actions" / f"{name}.yaml").read_text())
    assert action["runner_type"] == "workflow" and action["entry_point"] == f"workflows/{name}.yaml"
    body = yaml.safe_load((PACKS / "examples" / "actions" / action["entry_point"]).read_text())
    assert validate(body, action_lookup=_core_lookup(), parameters=action.get("parameters") or {}) == []


# ----------------------------------------------------------------------------------------------------------------
# POST /api/v1/workflows/validate
# ----------------------------------------------------------------------------------------------------------------

@pytest.fixture
def core_actions(db):
    pack = PackFactory(ref="core")
    ActionFactory(pack=pack, name="noop", parameters={})
    ActionFactory(pack=pack, name="echo", parameters={"message": {"type": "string", "required": True}})
    return pack


GOOD_SOURCE = """
version: 1.0
tasks:
  - name: start
    action: core.noop
    on_success: [say]
  - name: say
    action: core.echo
    input: {message: "{{ parameters.who }}"}
"""


@pytest.mark.django_db
def test_validate_endpoint_requires_authentication(api):
    assert api.post(URL, {"source": GOOD_SOURCE}, format="json").status_code == 401


@pytest.mark.django_db
def test_validate_endpoint_requires_reading_actions(core_actions):
    limited = PermissionSet.objects.create(name="rules-only", grants=[{"resource": "rules", "actions": ["view"]}])
    user = UserFactory(username="rules-reader")
    PermissionAssignment.objects.create(identity=user, permission_set=limited)
    client = APIClient()
    client.force_authenticate(user)
    assert client.post(URL, {"source": GOOD_SOURCE}, format="json").status_code == 403


def test_validate_endpoint_accepts_a_valid_yaml_source(viewer_api, core_actions):
    response = viewer_api.post(URL, {"source": GOOD_SOURCE, "pack": "core", "parameters": {"who": {"type": "string"}}},
                               format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["valid"] is True and body["errors"] == []
    assert body["definition"]["entry"] == ["start"]
    assert body["definition"]["tasks"]["start"]["next"] == [{"when": SUCCEEDED, "publish": {}, "do": ["say"]}]


def test_validate_endpoint_reports_every_error_of_a_definition(admin_api, core_actions):
    definition = {"tasks": [{"name": "start", "action": "core.noop", "next": [{"do": "finish"}]},
                            {"name": "say", "action": "core.echo", "input": {"msg": "{{ tasks.nope.result }}"}}]}
    response = admin_api.post(URL + "/", {"definition": definition}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["valid"] is False and body["definition"] is None
    assert {(e["task"], e["field"]) for e in body["errors"]} == {
        ("start", "tasks.start.next[0].do"), ("say", "tasks.say.input"), ("say", "tasks.say.input.msg")}
    assert any("no task 'nope'" in e["message"] for e in body["errors"])
    assert any("missing required input 'message' of core.echo" in e["message"] for e in body["errors"])


def test_validate_endpoint_hides_actions_the_caller_may_not_see(core_actions):
    ActionFactory(pack=PackFactory(ref="secretops"), name="wipe", parameters={})
    from apps.accounts.services import sync_builtin_sets

    sync_builtin_sets()
    user = UserFactory(username="core-viewer")
    PermissionAssignment.objects.create(identity=user, permission_set=PermissionSet.objects.get(name="viewer"),
                                        packs=["core"])
    client = APIClient()
    client.force_authenticate(user)
    body = client.post(URL, {"definition": wf(task("a"), task("b", "secretops.wipe"))}, format="json").json()
    assert body["errors"] == [{"task": "b", "field": "tasks.b.action", "message": "no action 'secretops.wipe'"}]


@pytest.mark.parametrize("payload,field,fragment", [
    ({"source": "tasks:\n  - name: a\n    action: [core.noop\n"}, "source", "invalid YAML at line 4"),
    ({"source": "tasks:\n  - name: a\n   action: x\n"}, "source", "at line 3"),
    ({}, "definition", "either `definition`"),
    ({"source": "tasks: []", "definition": {}}, "definition", "not both"),
    ({"definition": {"tasks": []}, "parameters": [1]}, "parameters", "must be an object"),
])
def test_validate_endpoint_rejects_unreadable_requests(admin_api, payload, field, fragment):
    response = admin_api.post(URL, payload, format="json")
    assert response.status_code == 400, response.content
    assert fragment in " ".join(response.json()[field])


def test_validate_endpoint_answers_errors_for_a_yaml_document_that_is_not_a_mapping(admin_api):
    body = admin_api.post(URL, {"source": "- just\n- a list\n"}, format="json").json()
    assert body == {"valid": False, "definition": None,
                    "errors": [{"task": None, "field": "(root)", "message": "a workflow must be a mapping, got a list"}]}


@pytest.mark.django_db
def test_validate_endpoint_is_in_the_openapi_schema(api):
    schema = api.get("/api/schema/?format=json").json()
    path = next(p for p in schema["paths"] if p.rstrip("/") == URL)
    operation = schema["paths"][path]["post"]
    assert operation["operationId"] == "workflows_validate"
    assert {"200", "400"} <= set(operation["responses"])


# ----------------------------------------------------------------------------------------------------------------
# Pack registration
# ----------------------------------------------------------------------------------------------------------------

@pytest.fixture
def core_pack_registered(db):
    register_pack(PACKS / "core")


def _workflow_pack(root: Path, body: str) -> Path:
    write(root, "pack.yaml", "ref: flows\nversion: 1.0.0\n")
    write(root, "actions/step.yaml", """
        name: step
        runner_type: shell
        entry_point: step.sh
        parameters:
          unit: {type: string, required: true}
    """)
    write(root, "actions/step.sh", "#!/bin/sh\necho ok\n")
    write(root, "actions/deploy.yaml", """
        name: deploy
        runner_type: workflow
        entry_point: workflows/deploy.yaml
        parameters:
          unit: {type: string, default: web}
    """)
    write(root, "actions/workflows/deploy.yaml", body)
    return root


def test_registration_stores_the_normalised_definition(core_pack_registered, tmp_path):
    root = _workflow_pack(tmp_path / "flows", """
        version: 1.0
        tasks:
          - name: first
            action: flows.step
            input: {unit: "{{ parameters.unit }}"}
            on_success: [last]
          - name: last
            action: core.echo
            input: {message: done}
    """)
    register_pack(root)
    stored = WorkflowDefinition.objects.get(action__ref="flows.deploy")
    assert stored.valid is True and stored.errors == []
    assert stored.definition == normalize(yaml.safe_load((root / "actions/workflows/deploy.yaml").read_text()))
    assert stored.definition["entry"] == ["first"] and stored.definition["tasks"]["last"]["action"] == "core.echo"
    assert "name: first" in stored.source and len(stored.checksum) == 64


def test_registering_a_pack_with_a_bad_workflow_fails_naming_file_and_field(core_pack_registered, tmp_path):
    root = _workflow_pack(tmp_path / "flows", """
        version: 1.0
        tasks:
          - name: first
            action: flows.step
            on_success: [lsat]
          - name: last
            action: flows.missing
            input: {message: "{{ vars.nothing }}"}
    """)
    with pytest.raises(PackError) as info:
        register_pack(root)
    errors = info.value.errors
    for expected in ("actions/workflows/deploy.yaml: tasks.first.input: missing required input 'unit' of flows.step",
                     "actions/workflows/deploy.yaml: tasks.first.on_success[0]: 'lsat' is not a task",
                     "actions/workflows/deploy.yaml: tasks.last.action: no action 'flows.missing'",
                     "actions/workflows/deploy.yaml: tasks.last.input.message: variable 'nothing' is never set"):
        assert any(e.startswith(expected) for e in errors), (expected, errors)
    assert not Pack.objects.filter(ref="flows").exists()
    assert not Action.objects.filter(ref__startswith="flows.").exists()
    assert not WorkflowDefinition.objects.filter(action__ref="flows.deploy").exists()


def test_an_action_whose_file_is_removed_no_longer_satisfies_a_workflow(core_pack_registered, tmp_path):
    root = _workflow_pack(tmp_path / "flows", """
        version: 1.0
        tasks:
          - name: first
            action: flows.step
            input: {unit: web}
    """)
    register_pack(root)
    (root / "actions" / "step.yaml").unlink()
    with pytest.raises(PackError, match="tasks.first.action: no action 'flows.step'"):
        register_pack(root)
    assert Action.objects.filter(ref="flows.step").exists()  # the previous version stays


def test_the_example_pack_registers(core_pack_registered):
    result = register_pack(PACKS / "examples")
    assert result.created == {"actions": len(EXAMPLES)}
    definitions = WorkflowDefinition.objects.filter(action__pack__ref="examples")
    assert sorted(d.action.name for d in definitions) == EXAMPLES
    assert all(d.valid and d.definition["order"] for d in definitions)


def test_input_defaults_are_kept():
    body = {"version": 1.0, "input": ["host", {"region": "us-east"}], "tasks": [{"name": "a", "action": "core.noop"}]}
    normalised = normalize(body)
    assert normalised["input"] == ["host", "region"] and normalised["input_defaults"] == {"region": "us-east"}
