"""The workflow language (SPEC §7): normalise a workflow body for the conductor, and validate it.

:func:`normalize` turns a body as written (a list or a mapping of tasks, shorthands, Orquesta-style publish
lists, comma-separated ``do`` strings) into the one format the conductor reads::

    {"version": 1.0, "input": [names], "vars": {...}, "output": {...} | None,
     "order": [task names as written], "entry": [tasks no transition points to],
     "tasks": {name: {"name", "action", "input", "when", "join", "with_items", "concurrency", "batch_size",
                      "retry", "timeout", "next": [{"when", "publish", "do"}, ...]}}}

:func:`validate` reports every problem at once, each ``{"task", "field", "message"}``; ``field`` is a path
such as ``tasks.fetch.next[0].do``. Neither function raises on a malformed body.
"""
from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator
from typing import Any

from jinja2 import TemplateSyntaxError, meta, nodes
from jinja2.parser import Parser

from apps.core import templating
from apps.core.refs import COMPONENT_REF_RE

ENGINE_COMMANDS = frozenset({"fail", "noop"})
FUNCTIONS = frozenset({"succeeded", "failed", "timed_out", "completed", "result", "task_status"})
SCOPES = frozenset({"parameters", "vars", "tasks", "item", "items", "index", "batch_index", "kv", "pack", "system"})
ITEM_SCOPES = frozenset({"item", "index"})  # in the input of a with_items task
BATCH_SCOPES = frozenset({"items", "batch_index"})  # ... of a with_items task with batch_size
BACKOFFS = ("constant", "linear", "exponential")
MAPPING_METHODS = frozenset(name for name in dir(dict) if not name.startswith("_"))

TOP_LEVEL_KEYS = ("version", "description", "input", "vars", "tasks", "output")
TASK_KEYS = ("name", "action", "input", "when", "join", "with_items", "concurrency", "batch_size", "retry", "timeout",
             "next", "publish", "on_success", "on_failure", "on_complete", "on_timeout")
TRANSITION_KEYS = ("when", "publish", "do")
RETRY_KEYS = ("count", "delay", "backoff", "max_delay", "when")
# Shorthand → the condition of the transition it stands for, appended after the explicit `next` entries.
SHORTHANDS = (("on_success", "{{ succeeded() }}"), ("on_failure", "{{ failed() }}"), ("on_complete", None),
              ("on_timeout", "{{ timed_out() }}"))
PUBLISH_WHEN = "{{ succeeded() }}"

TASK_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,127}$")
VAR_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# --------------------------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------------------------

def normalize(body: Any) -> dict[str, Any]:
    """The conductor's form of ``body``. Best effort: malformed parts are dropped or defaulted, never raised on."""
    if not isinstance(body, dict):
        body = {}
    tasks: dict[str, dict[str, Any]] = {}
    for name, raw, _field in _iter_tasks(body.get("tasks")):
        if isinstance(name, str) and name not in tasks and name not in ENGINE_COMMANDS and isinstance(raw, dict):
            tasks[name] = _normalize_task(name, raw)
    order = list(tasks)
    targets = {target for task in tasks.values() for transition in task["next"] for target in transition["do"]}
    output = _pairs(body.get("output"))
    return {
        "version": _version(body.get("version")),
        "input": _input_names(body.get("input")),
        "input_defaults": _input_defaults(body.get("input")),
        "vars": _pairs(body.get("vars")) or {},
        "output": output if body.get("output") is not None else None,
        "order": order,
        "entry": [name for name in order if name not in targets],
        "tasks": tasks,
    }


def _normalize_task(name: str, raw: dict[str, Any]) -> dict[str, Any]:
    with_items = raw.get("with_items")
    task_input = raw.get("input")
    return {
        "name": name,
        "action": raw["action"] if isinstance(raw.get("action"), str) else "",
        "input": dict(task_input) if isinstance(task_input, dict) else {},
        "when": _condition(raw.get("when")),
        "join": _join(raw.get("join")),
        "with_items": with_items if isinstance(with_items, str | list) else None,
        "concurrency": _int(raw.get("concurrency")),
        "batch_size": _int(raw.get("batch_size")),
        "retry": _retry(raw.get("retry")),
        "timeout": _int(raw.get("timeout")),
        "next": _transitions(raw),
    }


def _transitions(raw: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    explicit = raw.get("next")
    for transition in explicit if isinstance(explicit, list) else []:
        if isinstance(transition, dict):
            out.append({"when": _condition(transition.get("when")), "publish": _pairs(transition.get("publish")) or {},
                        "do": _do_list(transition.get("do"))})
    if raw.get("publish") is not None:
        out.append({"when": PUBLISH_WHEN, "publish": _pairs(raw["publish"]) or {}, "do": []})
    for key, when in SHORTHANDS:
        if raw.get(key) is not None:
            out.append({"when": when, "publish": {}, "do": _do_list(raw[key])})
    return out


def _iter_tasks(tasks: Any) -> Iterator[tuple[Any, Any, str]]:
    """(name, raw task, field path of the task) for the list form and the mapping form."""
    if isinstance(tasks, list):
        for index, raw in enumerate(tasks):
            yield (raw.get("name") if isinstance(raw, dict) else None), raw, f"tasks[{index}]"
    elif isinstance(tasks, dict):
        for name, raw in tasks.items():
            yield name, raw, f"tasks.{name}"


def _pairs(value: Any) -> dict[str, Any] | None:
    """A mapping, or Orquesta's list of single-key mappings, as one dict (malformed entries dropped)."""
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):
        merged: dict[str, Any] = {}
        for entry in value:
            if isinstance(entry, dict):
                merged.update(entry)
        return merged
    return None


def _do_list(value: Any) -> list[str]:
    """``"a"``, ``"a, b"`` or ``[a, b]`` → ``["a", "b"]``."""
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list):
        return []
    return [item.strip() for item in value if isinstance(item, str) and item.strip()]


def _condition(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _join(value: Any) -> str | int | None:
    return "all" if value == "all" else _int(value)


def _retry(value: Any) -> dict[str, Any] | None:
    if _int(value) is not None:
        value = {"count": value}
    if not isinstance(value, dict):
        return None
    backoff = value.get("backoff")
    delay = _number(value.get("delay"))
    return {
        "count": _int(value.get("count")) or 0,
        "delay": delay if delay is not None else 0.0,
        "backoff": backoff if backoff in BACKOFFS else "constant",
        "max_delay": _number(value.get("max_delay")),
        "when": _condition(value.get("when")),
    }


def _version(value: Any) -> float:
    if isinstance(value, bool) or value is None:
        return 1.0
    try:
        return float(value)
    except (TypeError, ValueError):
        return 1.0


def _input_defaults(value: Any) -> dict[str, Any]:
    """``input: [{region: us-east}]`` (or a mapping): defaults for parameters the caller did not give."""
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if isinstance(k, str) and v is not None}
    defaults: dict[str, Any] = {}
    for entry in value if isinstance(value, list) else []:
        if isinstance(entry, dict):
            defaults.update({k: v for k, v in entry.items() if isinstance(k, str)})
    return defaults


def _input_names(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [name for name in value if isinstance(name, str)]
    names: list[str] = []
    for entry in value if isinstance(value, list) else []:
        if isinstance(entry, str):
            names.append(entry)
        elif isinstance(entry, dict):
            names.extend(name for name in entry if isinstance(name, str))
    return names


# --------------------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------------------

def validate(body: Any, *, action_lookup: Callable[[str], Any] | None = None,
             parameters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every error of ``body`` at once: ``[{"task": name or None, "field": path, "message": text}, ...]``.

    ``action_lookup(ref)`` returns the Action a task runs (or None when there is none); without it, action
    existence and task inputs are not checked. ``parameters`` are the workflow action's own parameters (its
    inputs); with them, ``parameters.X`` references and the ``input`` list are checked against them.
    """
    return _Validator(action_lookup, parameters).run(body)


class _Validator:
    def __init__(self, action_lookup, parameters) -> None:
        self.action_lookup = action_lookup
        self.parameters = parameters if isinstance(parameters, dict) else None
        self.errors: list[dict[str, Any]] = []
        self.task_names: set[str] = set()
        self.var_names: set[str] = set()
        self._actions: dict[str, Any] = {}

    def error(self, task: str | None, field: str, message: str) -> None:
        self.errors.append({"task": task, "field": field, "message": message})

    # -- the whole body ----------------------------------------------------------------------------------------

    def run(self, body: Any) -> list[dict[str, Any]]:
        if not isinstance(body, dict):
            self.error(None, "(root)", f"a workflow must be a mapping, got {_type(body)}")
            return self.errors
        for key in body:
            if key not in TOP_LEVEL_KEYS:
                self.error(None, str(key), _unknown_key(key, TOP_LEVEL_KEYS))
        self._check_version(body)
        self._check_input(body.get("input"))

        normalised = normalize(body)
        self.task_names = set(normalised["tasks"])
        self.var_names = set(normalised["vars"]) | {
            name for task in normalised["tasks"].values() for transition in task["next"] for name in transition["publish"]}

        if body.get("vars") is not None:
            self._check_mapping(None, "vars", body["vars"], name_re=VAR_NAME_RE)
        tasks = body.get("tasks")
        if tasks is None:
            self.error(None, "tasks", "required: a workflow needs a list of tasks")
        elif not isinstance(tasks, list | dict):
            self.error(None, "tasks", f"must be a list of tasks (or a mapping of name to task), got {_type(tasks)}")
        elif not tasks:
            self.error(None, "tasks", "a workflow needs at least one task")
        else:
            seen: dict[str, str] = {}
            for name, raw, field in _iter_tasks(tasks):
                self._check_task(name, raw, field, seen, isinstance(tasks, dict))
            self._check_graph(normalised)
        if body.get("output") is not None:
            self._check_mapping(None, "output", body["output"])
        return self.errors

    def _check_version(self, body: dict[str, Any]) -> None:
        if "version" not in body:
            return
        version = body["version"]
        if isinstance(version, bool) or version not in (1, 1.0, "1", "1.0"):
            self.error(None, "version", f"unsupported version {version!r}: the only version is 1.0")

    def _check_input(self, value: Any) -> None:
        if value is None:
            return
        entries: list[tuple[str, Any]] = []
        if isinstance(value, dict):
            entries = [(f"input.{name}", name) for name in value]
        elif isinstance(value, list):
            for index, entry in enumerate(value):
                if isinstance(entry, str):
                    entries.append((f"input[{index}]", entry))
                elif isinstance(entry, dict) and len(entry) == 1:
                    entries.append((f"input[{index}]", next(iter(entry))))
                else:
                    self.error(None, f"input[{index}]", "each input is a name or a single {name: default} mapping")
        else:
            self.error(None, "input", f"must be a list of input names, got {_type(value)}")
        for field, name in entries:
            if not isinstance(name, str) or not VAR_NAME_RE.match(name):
                self.error(None, field, f"{name!r} is not a valid input name")
            elif self.parameters is not None and name not in self.parameters:
                self.error(None, field, f"{name!r} is not a parameter of the workflow action (its parameters are the "
                                        f"workflow's inputs; declared: {_names(self.parameters) or 'none'})")

    def _check_mapping(self, task: str | None, field: str, value: Any, *, name_re=None) -> None:
        """vars, output and publish: a mapping (or a list of single-key mappings) of name to value-or-template."""
        if isinstance(value, dict):
            entries = [(f"{field}.{key}", key, item) for key, item in value.items()]
        elif isinstance(value, list):
            entries = []
            for index, entry in enumerate(value):
                if isinstance(entry, dict) and len(entry) == 1:
                    key, item = next(iter(entry.items()))
                    entries.append((f"{field}.{key}", key, item))
                else:
                    self.error(task, f"{field}[{index}]", "each entry of the list form is a single {name: value} mapping")
        else:
            self.error(task, field, f"must be a mapping of name to value, got {_type(value)}")
            return
        for path, key, item in entries:
            if not isinstance(key, str) or (name_re is not None and not name_re.match(key)):
                self.error(task, path, f"{key!r} is not a valid name (letters, digits and '_', not starting with a digit)")
            self._check_templates(task, path, item)

    # -- one task ------------------------------------------------------------------------------------------------

    def _check_task(self, name: Any, raw: Any, field: str, seen: dict[str, str], mapping_form: bool) -> None:
        if not isinstance(raw, dict):
            self.error(name if isinstance(name, str) else None, field, f"a task must be a mapping, got {_type(raw)}")
            return
        task: str | None = None
        name_field = field if mapping_form else f"{field}.name"
        if mapping_form and "name" in raw and raw["name"] != name:
            self.error(name if isinstance(name, str) else None, f"{field}.name",
                       f"{raw['name']!r} differs from the task's key {name!r}")
        if name is None and not mapping_form:
            self.error(None, name_field, "required: every task needs a name")
        elif not isinstance(name, str):
            self.error(None, name_field, f"a task name must be a string, got {_type(name)}")
        elif name in ENGINE_COMMANDS:
            self.error(name, name_field, f"{name!r} is an engine command (fail, noop), not a valid task name")
            task = name
        elif not TASK_NAME_RE.match(name):
            self.error(name, name_field, f"{name!r} is not a valid task name (letters, digits, '_' or '-', starting with "
                                         "a letter or '_', at most 128 characters)")
            task = name
        elif name in seen:
            self.error(name, name_field, f"duplicate task name {name!r} (first defined at {seen[name]})")
            task = name
        else:
            seen[name] = field
            task = name
            field = f"tasks.{name}"

        for key in raw:
            if key not in TASK_KEYS:
                self.error(task, f"{field}.{key}", _unknown_key(key, TASK_KEYS))

        self._check_action(task, field, raw)
        if raw.get("when") is not None:
            self._check_condition(task, f"{field}.when", raw["when"])
        self._check_join(task, field, raw)
        self._check_items(task, field, raw)
        self._check_retry(task, field, raw.get("retry"))
        if raw.get("timeout") is not None and not _positive_int(raw["timeout"]):
            self.error(task, f"{field}.timeout", f"must be a positive number of seconds, got {raw['timeout']!r}")

        explicit = raw.get("next")
        if explicit is not None and not isinstance(explicit, list):
            self.error(task, f"{field}.next", f"must be a list of transitions, got {_type(explicit)}")
        for index, transition in enumerate(explicit if isinstance(explicit, list) else []):
            self._check_transition(task, f"{field}.next[{index}]", transition)
        if raw.get("publish") is not None:
            self._check_mapping(task, f"{field}.publish", raw["publish"], name_re=VAR_NAME_RE)
        for key, _when in SHORTHANDS:
            if raw.get(key) is not None:
                self._check_do(task, f"{field}.{key}", raw[key])

    def _check_action(self, task: str | None, field: str, raw: dict[str, Any]) -> None:
        task_input = raw.get("input")
        action = self._resolve_action(task, field, raw.get("action"))
        if task_input is None:
            task_input = {}
        elif not isinstance(task_input, dict):
            self.error(task, f"{field}.input", f"must be a mapping of parameter name to value, got {_type(task_input)}")
            task_input = {}
        # Only a with_items task's input sees its item: `item`/`index`, or `items`/`batch_index` in batches.
        items = frozenset() if raw.get("with_items") is None else BATCH_SCOPES if raw.get("batch_size") else ITEM_SCOPES
        for key, value in task_input.items():
            self._check_templates(task, f"{field}.input.{key}", value, items=items)
        declared = getattr(action, "parameters", None) or {}
        if action is None or not isinstance(declared, dict):
            return
        for param, spec in declared.items():
            spec = spec if isinstance(spec, dict) else {}
            if spec.get("required") is True and "default" not in spec and param not in task_input:
                self.error(task, f"{field}.input", f"missing required input {param!r} of {action.ref}")
        for key in task_input:
            if key not in declared:
                known = f"declared: {_names(declared)}" if declared else "it takes no parameters"
                self.error(task, f"{field}.input.{key}", f"{key!r} is not a parameter of {action.ref} ({known})")

    def _resolve_action(self, task: str | None, field: str, ref: Any):
        """The Action a task runs (None when it is missing, malformed, unknown or not looked up)."""
        if ref is None:
            self.error(task, f"{field}.action", "required: the ref of the action this task runs (pack.action)")
            return None
        if not isinstance(ref, str) or not COMPONENT_REF_RE.match(ref):
            self.error(task, f"{field}.action", f"{ref!r} is not a valid action ref (expected '<pack>.<name>', lowercase)")
            return None
        if self.action_lookup is None:
            return None
        if ref not in self._actions:
            self._actions[ref] = self.action_lookup(ref)
        if self._actions[ref] is None:
            self.error(task, f"{field}.action", f"no action {ref!r}")
        return self._actions[ref]

    def _check_join(self, task: str | None, field: str, raw: dict[str, Any]) -> None:
        if "join" not in raw or raw["join"] is None:
            return
        join = raw["join"]
        if join != "all" and not _positive_int(join):
            self.error(task, f"{field}.join", f"must be 'all' or a positive number of inbound tasks, got {join!r}")

    def _check_items(self, task: str | None, field: str, raw: dict[str, Any]) -> None:
        with_items = raw.get("with_items")
        if with_items is not None:
            if isinstance(with_items, str):
                if not templating.is_template(with_items):
                    self.error(task, f"{field}.with_items",
                               f"must be a {{{{ expression }}}} giving a list, or a list; got the plain string {with_items!r}")
                else:
                    self._check_templates(task, f"{field}.with_items", with_items)
            elif isinstance(with_items, list):
                self._check_templates(task, f"{field}.with_items", with_items)
            else:
                self.error(task, f"{field}.with_items", f"must be a {{{{ expression }}}} or a list, got {_type(with_items)}")
        for key in ("concurrency", "batch_size"):
            if raw.get(key) is None:
                continue
            if not _positive_int(raw[key]):
                self.error(task, f"{field}.{key}", f"must be a positive integer, got {raw[key]!r}")
            elif with_items is None:
                self.error(task, f"{field}.{key}", f"{key} requires with_items")

    def _check_retry(self, task: str | None, field: str, retry: Any) -> None:
        if retry is None:
            return
        field = f"{field}.retry"
        if _int(retry) is not None and not isinstance(retry, float):
            if retry < 0:
                self.error(task, field, f"count must be 0 or more, got {retry}")
            return
        if not isinstance(retry, dict):
            self.error(task, field, f"must be a mapping {{count, delay, backoff, max_delay, when}}, got {_type(retry)}")
            return
        for key in retry:
            if key not in RETRY_KEYS:
                self.error(task, f"{field}.{key}", _unknown_key(key, RETRY_KEYS))
        count = retry.get("count")
        if count is None:
            self.error(task, f"{field}.count", "required: how many times to retry")
        elif isinstance(count, bool) or not isinstance(count, int) or count < 0:
            self.error(task, f"{field}.count", f"must be an integer of 0 or more, got {count!r}")
        for key in ("delay", "max_delay"):
            value = retry.get(key)
            if value is not None and (_number(value) is None or value < 0):
                self.error(task, f"{field}.{key}", f"must be a number of seconds of 0 or more, got {value!r}")
        delay, max_delay = _number(retry.get("delay")), _number(retry.get("max_delay"))
        if delay is not None and max_delay is not None and 0 <= max_delay < delay:
            self.error(task, f"{field}.max_delay", f"must not be less than delay ({max_delay:g} < {delay:g})")
        if retry.get("backoff") is not None and retry["backoff"] not in BACKOFFS:
            self.error(task, f"{field}.backoff", f"must be one of {', '.join(BACKOFFS)}, got {retry['backoff']!r}")
        if retry.get("when") is not None:
            self._check_condition(task, f"{field}.when", retry["when"])

    def _check_transition(self, task: str | None, field: str, transition: Any) -> None:
        if not isinstance(transition, dict):
            self.error(task, field, f"a transition must be a mapping {{when, publish, do}}, got {_type(transition)}")
            return
        for key in transition:
            if key not in TRANSITION_KEYS:
                self.error(task, f"{field}.{key}", _unknown_key(key, TRANSITION_KEYS))
        if transition.get("when") is not None:
            self._check_condition(task, f"{field}.when", transition["when"])
        if transition.get("publish") is not None:
            self._check_mapping(task, f"{field}.publish", transition["publish"], name_re=VAR_NAME_RE)
        if transition.get("do") is not None:
            self._check_do(task, f"{field}.do", transition["do"])

    def _check_do(self, task: str | None, field: str, value: Any) -> None:
        if isinstance(value, str):
            targets = [(field, name.strip()) for name in value.split(",")]
        elif isinstance(value, list):
            targets = []
            for index, name in enumerate(value):
                if isinstance(name, str):
                    targets.append((f"{field}[{index}]", name.strip()))
                else:
                    self.error(task, f"{field}[{index}]", f"must be a task name, got {_type(name)}")
        else:
            self.error(task, field, f"must be a task name or a list of task names, got {_type(value)}")
            return
        for path, name in targets:
            if not name:
                self.error(task, path, "empty task name")
            elif name not in self.task_names and name not in ENGINE_COMMANDS:
                self.error(task, path, f"{name!r} is not a task of this workflow{_suggest(name, self.task_names)}")

    # -- the task graph ------------------------------------------------------------------------------------------

    def _check_graph(self, normalised: dict[str, Any]) -> None:
        tasks = normalised["tasks"]
        if not tasks:
            return
        inbound: dict[str, list[str]] = {name: [] for name in tasks}
        for name, task in tasks.items():
            for transition in task["next"]:
                for target in transition["do"]:
                    if target in inbound and name not in inbound[target]:
                        inbound[target].append(name)
        for name, task in tasks.items():
            join = task["join"]
            if join is None or (join != "all" and join < 1):
                continue
            sources = inbound[name]
            if not sources:
                self.error(name, f"tasks.{name}.join", "join on a task that no transition leads to")
            elif join != "all" and join > len(sources):
                self.error(name, f"tasks.{name}.join",
                           f"waits for {join} inbound tasks but only {len(sources)} lead here ({', '.join(sources)})")
        entry = normalised["entry"]
        if not entry:
            self.error(None, "tasks", "no entry task: every task is the target of a transition, so nothing would start")
            return
        reachable: set[str] = set()
        pending = list(entry)
        while pending:
            name = pending.pop()
            if name in reachable:
                continue
            reachable.add(name)
            pending.extend(t for transition in tasks[name]["next"] for t in transition["do"] if t in tasks)
        for name in normalised["order"]:
            if name not in reachable:
                self.error(name, f"tasks.{name}",
                           f"unreachable: no path from the entry task(s) ({', '.join(entry)}) leads here")

    # -- templates -----------------------------------------------------------------------------------------------

    def _check_condition(self, task: str | None, field: str, value: Any) -> None:
        """A ``when``: ``{{ expression }}`` or a bare expression, evaluated like templating.render_condition."""
        if isinstance(value, bool):
            return
        if not isinstance(value, str):
            self.error(task, field, f"must be an expression, got {_type(value)}")
            return
        whole = templating.WHOLE_TEMPLATE_RE.match(value)
        expression = whole.group("expr").strip() if whole else value.strip()
        if not expression:
            self.error(task, field, "empty expression")
            return
        self._check_expression(task, field, value, expression, frozenset())

    def _check_templates(self, task: str | None, field: str, value: Any, *, items: frozenset[str] = frozenset()) -> None:
        """Every template string anywhere inside ``value`` (a JSON value), compiled as the runtime will."""
        if isinstance(value, dict):
            for key, item in value.items():
                self._check_templates(task, f"{field}.{key}", item, items=items)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                self._check_templates(task, f"{field}[{index}]", item, items=items)
        elif templating.is_template(value):
            whole = templating.WHOLE_TEMPLATE_RE.match(value)
            if whole and "{{" not in whole.group("expr") and "}}" not in whole.group("expr"):
                self._check_expression(task, field, value, whole.group("expr").strip(), items)
                return
            problem = templating.syntax_errors(value)
            if problem:
                self.error(task, field, f"template syntax error in {value!r}: {problem}")
                return
            try:
                tree = templating.environment().parse(value)
            except TemplateSyntaxError as exc:  # pragma: no cover - syntax_errors compiled it already
                self.error(task, field, f"template syntax error in {value!r}: {exc.message}")
                return
            self._check_references(task, field, value, tree, items)

    def _check_expression(self, task: str | None, field: str, source: str, expression: str, items: frozenset[str]) -> None:
        env = templating.environment()
        try:
            env.compile_expression(expression)
            parsed = Parser(env, expression, state="variable").parse_expression()
        except TemplateSyntaxError as exc:
            self.error(task, field, f"expression syntax error in {source!r}: {exc.message}")
            return
        tree = nodes.Template([nodes.Output([parsed], lineno=1)], lineno=1)
        tree.set_environment(env)
        self._check_references(task, field, source, tree, items)

    def _check_references(self, task: str | None, field: str, source: str, tree: nodes.Template,
                          items: frozenset[str]) -> None:
        known = SCOPES | FUNCTIONS | set(templating.environment().globals)
        for name in sorted(meta.find_undeclared_variables(tree)):
            if name in ITEM_SCOPES | BATCH_SCOPES and name not in items:
                self.error(task, field, f"{name!r} is not defined here: item and index exist only in the input of a "
                                        f"with_items task, items and batch_index when it has batch_size ({source!r})")
            elif name not in known:
                self.error(task, field, f"unknown name {name!r} in {source!r}{_suggest(name, known)} "
                                        f"(scopes: {', '.join(sorted(SCOPES))})")
        reported: set[tuple[str, str]] = set()
        for scope, key in _scope_references(tree):
            if (scope, key) in reported:
                continue
            reported.add((scope, key))
            if scope == "tasks" and key not in self.task_names:
                self.error(task, field, f"no task {key!r} (referenced in {source!r}){_suggest(key, self.task_names)}")
            elif scope == "vars" and key not in self.var_names:
                self.error(task, field, f"variable {key!r} is never set: not in vars and published by no task "
                                        f"(referenced in {source!r}){_suggest(key, self.var_names)}")
            elif scope == "parameters" and self.parameters is not None and key not in self.parameters:
                self.error(task, field, f"no parameter {key!r} (referenced in {source!r}); declared: "
                                        f"{_names(self.parameters) or 'none'}")


def _scope_references(tree: nodes.Node) -> Iterator[tuple[str, str]]:
    """``tasks.X`` / ``tasks['X']`` / ``task_status('X')`` and the same for ``vars`` and ``parameters``."""
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Call)):
        if isinstance(node, nodes.Call):
            if (isinstance(node.node, nodes.Name) and node.node.name == "task_status" and node.args
                    and isinstance(node.args[0], nodes.Const) and isinstance(node.args[0].value, str)):
                yield "tasks", node.args[0].value
            continue
        target = node.node
        if not isinstance(target, nodes.Name) or target.name not in ("tasks", "vars", "parameters"):
            continue
        if isinstance(node, nodes.Getattr):
            if node.attr not in MAPPING_METHODS:  # vars.get('x', 0) is a method call, not a reference
                yield target.name, node.attr
        elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            yield target.name, node.arg.value


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _type(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number",
            type(None): "nothing"}.get(type(value), type(value).__name__)


def _names(mapping: dict[str, Any]) -> str:
    return ", ".join(sorted(str(name) for name in mapping))


def _suggest(word: Any, candidates) -> str:
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, sorted(str(c) for c in candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unknown_key(key: Any, known: tuple[str, ...]) -> str:
    return f"unknown key {key!r}" + (_suggest(key, known) or f" (known keys: {', '.join(known)})")
