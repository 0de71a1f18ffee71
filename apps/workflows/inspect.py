"""What the API shows of a running or finished workflow: its graph, its task runs, its live context."""
from __future__ import annotations

from typing import Any

from apps.executions.parameters import REDACTED

from .models import TaskExecution, WorkflowExecution

STATUS_COLORS = {"succeeded": "palegreen", "failed": "lightcoral", "timeout": "orange", "canceled": "lightgrey",
                 "running": "lightblue", "pending": "khaki", "ready": "white", "waiting": "lightyellow",
                 "skipped": "grey90"}


def _iso(value) -> str | None:
    return value.isoformat() if value else None


def graph(wf: WorkflowExecution) -> dict[str, Any]:
    """Nodes (each task of the definition, with its latest run's status and timing, and how many runs it
    had) and edges (each transition target, with its condition and what it publishes)."""
    definition = wf.definition
    runs: dict[str, list[dict[str, Any]]] = {}
    for row in (TaskExecution.objects.filter(workflow_execution=wf).order_by("id")
                .values("id", "task_name", "status", "attempt", "started_at", "finished_at", "items_total",
                        "items_done", "items_failed", "execution_id", "error")):
        runs.setdefault(row["task_name"], []).append(row)
    nodes = []
    for name in definition.get("order") or list(definition.get("tasks", {})):
        task = definition["tasks"][name]
        latest = runs.get(name, [None])[-1]
        node = {
            "id": name, "action": task.get("action"), "status": latest["status"] if latest else "not_run",
            "runs": len(runs.get(name, [])), "attempt": latest["attempt"] if latest else 0,
            "started_at": _iso(latest["started_at"]) if latest else None,
            "finished_at": _iso(latest["finished_at"]) if latest else None,
            "duration_ms": (int((latest["finished_at"] - latest["started_at"]).total_seconds() * 1000)
                            if latest and latest["started_at"] and latest["finished_at"] else None),
            "execution": latest["execution_id"] if latest else None,
            "error": (latest["error"] or None) if latest else None,
            "entry": name in (definition.get("entry") or []),
            "join": task.get("join"),
        }
        if task.get("with_items") is not None:
            node["items"] = ({"total": latest["items_total"], "done": latest["items_done"],
                              "failed": latest["items_failed"]} if latest else None)
        nodes.append(node)
    edges = []
    for name in definition.get("order") or list(definition.get("tasks", {})):
        for index, tr in enumerate(definition["tasks"][name].get("next") or []):
            for target in tr.get("do") or []:
                edges.append({"from": name, "to": target, "when": tr.get("when"), "index": index,
                              "publish": sorted((tr.get("publish") or {}).keys()),
                              "command": target in ("fail", "noop")})
    return {"execution": wf.execution_id, "status": wf.execution.status, "nodes": nodes, "edges": edges}


def _dot_quote(text: str) -> str:
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(data: dict[str, Any]) -> str:
    """Graphviz text: ``dot -Tsvg`` renders it."""
    lines = [f"digraph workflow_{data['execution']} {{", "  rankdir=LR;", '  node [shape=box, style="rounded,filled"];']
    commands = set()
    for node in data["nodes"]:
        label = f"{node['id']}\n{node['action']}\n{node['status']}"
        if node.get("items"):
            label += f" {node['items']['done']}/{node['items']['total']}"
        color = STATUS_COLORS.get(node["status"], "white")
        lines.append(f"  {_dot_quote(node['id'])} [label={_dot_quote(label)}, fillcolor={color}];")
    for edge in data["edges"]:
        if edge["command"]:
            commands.add(edge["to"])
        label = edge["when"] or ""
        if edge["publish"]:
            label += (" " if label else "") + "publish: " + ", ".join(edge["publish"])
        lines.append(f"  {_dot_quote(edge['from'])} -> {_dot_quote(edge['to'])} [label={_dot_quote(label)}];")
    for command in sorted(commands):
        lines.append(f"  {_dot_quote(command)} [shape=octagon, fillcolor=white];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def task_runs(wf: WorkflowExecution) -> list[dict[str, Any]]:
    """Every task run in order: input (as the child stored it, secrets redacted), result, published."""
    rows = []
    for te in TaskExecution.objects.filter(workflow_execution=wf).defer("items").order_by("id"):
        rows.append({
            "id": te.pk, "task": te.task_name, "status": te.status, "attempt": te.attempt, "input": te.input,
            "result": te.result, "published": _redact_published(wf, te.published), "error": te.error or None,
            "execution": te.execution_id, "started_at": _iso(te.started_at), "finished_at": _iso(te.finished_at),
            "run_after": _iso(te.run_after), "timeout_at": _iso(te.timeout_at),
            "join": ({"required": te.join_required, "arrivals": te.join_arrivals}
                     if te.join_required is not None else None),
            "items": ({"total": te.items_total, "started": te.items_started, "done": te.items_done,
                       "failed": te.items_failed, "concurrency": te.concurrency}
                      if te.items_total is not None else None),
        })
    return rows


def _redact_published(wf: WorkflowExecution, published: dict[str, Any]) -> dict[str, Any]:
    if not published:
        return {}
    secret = set(wf.variables.filter(name__in=list(published), secret=True).values_list("name", flat=True))
    return {k: (REDACTED if k in secret else v) for k, v in published.items()}


def live_context(wf: WorkflowExecution) -> dict[str, Any]:
    """``parameters`` (as stored: secrets redacted) and ``vars`` (secret-derived ones redacted)."""
    variables = {v.name: (REDACTED if v.secret else v.value) for v in wf.variables.order_by("name")}
    return {"parameters": wf.execution.parameters, "vars": variables, "errors": wf.errors or [],
            "failing": wf.failing, "output": wf.output}
