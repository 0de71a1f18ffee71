"""The runtimes Attune ships (SPEC §1). Process runtimes get their own Celery queue in production."""
from __future__ import annotations

BUILTIN_RUNTIMES = [
    {"name": "shell", "kind": "shell", "interpreter": "/bin/sh", "queue": "actions.shell",
     "description": "Runs the entry point with /bin/sh (or directly when executable)."},
    {"name": "python", "kind": "python", "interpreter": "python3", "queue": "actions.python",
     "description": "Runs the entry point with the pack's virtualenv Python."},
    {"name": "node", "kind": "node", "interpreter": "node", "queue": "actions.node",
     "description": "Runs the entry point with Node.js, with the pack's node_modules."},
    {"name": "noop", "kind": "noop", "queue": "actions.inprocess", "description": "Does nothing, in-process."},
    {"name": "http", "kind": "http", "queue": "actions.inprocess", "description": "An HTTP request, in-process."},
    {"name": "inquiry", "kind": "inquiry", "queue": "orchestration",
     "description": "Asks a person; the execution waits, pending."},
    {"name": "workflow", "kind": "workflow", "queue": "orchestration",
     "description": "Runs a YAML task graph through the conductor."},
]


def sync_builtin_runtimes(Runtime=None) -> None:
    """Create or refresh the built-in runtimes (migration, `attune setup`, tests after a flush)."""
    if Runtime is None:
        from .models import Runtime
    for spec in BUILTIN_RUNTIMES:
        Runtime.objects.update_or_create(name=spec["name"], defaults={k: v for k, v in spec.items() if k != "name"})
