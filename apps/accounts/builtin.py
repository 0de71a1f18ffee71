"""The four built-in permission sets (SPEC §10)."""
from __future__ import annotations

CONFIG_RESOURCES = ["packs", "actions", "rules", "keys", "triggers", "sensors", "policies", "workflows", "webhooks"]
READABLE = [
    "packs", "runtimes", "actions", "triggers", "sensors", "rules", "policies", "keys", "events",
    "enforcements", "executions", "workflows", "inquiries", "workers", "artifacts", "webhooks",
]

BUILTIN_SETS: dict[str, dict] = {
    "admin": {
        "description": "Everything, including identities, permission sets and secrets.",
        "grants": [{"resource": "*", "actions": ["*"]}],
    },
    "editor": {
        "description": "Manage packs, actions, rules, keys (and what operators may do).",
        "grants": (
            [{"resource": r, "actions": ["view"]} for r in READABLE]
            + [{"resource": r, "actions": ["create", "update", "delete"]} for r in CONFIG_RESOURCES]
            + [
                {"resource": "actions", "actions": ["execute"]},
                {"resource": "executions", "actions": ["create", "execute", "cancel"]},
                {"resource": "inquiries", "actions": ["respond"]},
                {"resource": "events", "actions": ["create"]},
            ]
        ),
    },
    "operator": {
        "description": "Execute, cancel, respond to inquiries; read everything non-secret.",
        "grants": [{"resource": r, "actions": ["view"]} for r in READABLE]
        + [
            {"resource": "actions", "actions": ["execute"]},
            {"resource": "executions", "actions": ["create", "execute", "cancel"]},
            {"resource": "inquiries", "actions": ["respond"]},
            {"resource": "events", "actions": ["create"]},
        ],
    },
    "viewer": {
        "description": "Read-only.",
        "grants": [{"resource": r, "actions": ["view"]} for r in READABLE],
    },
}
