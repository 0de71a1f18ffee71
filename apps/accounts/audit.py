"""The audit log: :func:`record` one :class:`~apps.accounts.models.AuditEvent` per security-relevant act.

Recorded: logins (``login``, ``login_failed``, ``login_throttled``), identities, permission sets and
assignments changed through the API or the admin (``<type>.create|update|delete``), API tokens issued and
revoked, secrets read in clear (``key.decrypt``, ``pack_config.decrypt``), executions started through the API
(``execution.create``) and inquiry answers (``inquiry.respond``).

``details`` never holds secret values: callers pass names and ids, and any key that looks like a secret
(password, secret, token, hmac, ...) is replaced by ``"********"`` whatever it holds.
"""
from __future__ import annotations

import ipaddress
import re
from typing import Any

from apps.core.rows import insert

from .models import AuditEvent

REDACTED = "********"
SECRET_KEY_PATTERN = re.compile(r"passw(or)?d|secret|token|hmac|credential|private|api_?key", re.IGNORECASE)
MAX_DETAIL_CHARS = 512


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def object_type_of(obj: Any) -> str:
    return _snake(type(obj).__name__)


def object_ref_of(obj: Any) -> str:
    for attribute in ("ref", "username", "name"):
        value = getattr(obj, attribute, None)
        if isinstance(value, str) and value:
            return value
    return str(getattr(obj, "pk", "") or "")


def sanitize(value: Any, depth: int = 0) -> Any:
    """A JSON-safe copy of ``value`` with secret-looking keys redacted and long strings cut."""
    if depth > 6:
        return "…"
    if isinstance(value, dict):
        return {str(k): REDACTED if SECRET_KEY_PATTERN.search(str(k)) else sanitize(v, depth + 1)
                for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else value
        return [sanitize(v, depth + 1) for v in items]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    text = str(value)
    return text if len(text) <= MAX_DETAIL_CHARS else text[:MAX_DETAIL_CHARS] + "…"


def client_address(request) -> str | None:
    """The peer address of the connection (``REMOTE_ADDR``). Forwarded-for headers are not trusted: behind a
    reverse proxy, have the proxy set REMOTE_ADDR (e.g. uvicorn ``--proxy-headers``)."""
    if request is None:
        return None
    address = (getattr(request, "META", None) or {}).get("REMOTE_ADDR") or ""
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return None


def record(actor, action: str, obj: Any = None, request=None, *, actor_name: str | None = None,
           object_type: str | None = None, object_ref: str | None = None, pack_ref: str | None = None,
           **details: Any) -> AuditEvent:
    """Write one audit event. ``actor`` is a user (or None / anonymous); ``obj`` the object acted on, from
    which type, ref and pack are taken unless given; ``details`` are extra facts (never secret values)."""
    return insert(event(actor, action, obj, request, actor_name=actor_name, object_type=object_type,
                        object_ref=object_ref, pack_ref=pack_ref, **details))


def event(actor, action: str, obj: Any = None, request=None, *, actor_name: str | None = None,
          object_type: str | None = None, object_ref: str | None = None, pack_ref: str | None = None,
          **details: Any) -> AuditEvent:
    """The audit event :func:`record` writes, not yet saved: for writing it in the same statement as the
    object it is about (``rows.insert_linked``, ``object_ref`` then set to that object's new id)."""
    from .permissions import object_pack

    user = actor if actor is not None and getattr(actor, "is_authenticated", False) else None
    if obj is not None:
        object_type = object_type or object_type_of(obj)
        object_ref = object_ref if object_ref is not None else object_ref_of(obj)
        if pack_ref is None:
            pack_ref = object_pack(obj)
    return AuditEvent(
        actor=user,
        actor_name=(actor_name if actor_name is not None else getattr(user, "username", "") or "")[:150],
        action=action,
        object_type=object_type or "",
        object_ref=(object_ref or "")[:256],
        pack_ref=pack_ref or "",
        details=sanitize(details),
        remote_addr=client_address(request),
    )


def assignment_facts(assignment) -> dict[str, Any]:
    """What an assignment grants, for its create/update/delete events."""
    return {"identity": assignment.identity.username, "permission_set": assignment.permission_set.name,
            "packs": assignment.packs}


# --- login signals (connected in AccountsConfig.ready) ----------------------------------------------------

def on_login_failed(sender, credentials=None, request=None, **kwargs) -> None:
    """Every failed ``authenticate()``: the JWT login, the admin and browsable-API login forms."""
    username = str((credentials or {}).get("username") or "")
    record(None, "login_failed", request=request, actor_name=username, object_type="identity", object_ref=username,
           via=_login_channel(request))


def on_logged_in(sender, request=None, user=None, **kwargs) -> None:
    """Session logins (admin, browsable API). JWT logins are recorded by the login view."""
    record(user, "login", obj=user, request=request, object_type="identity", via="session")


def _login_channel(request) -> str:
    path = getattr(request, "path", "") or ""
    if path.startswith("/api/v1/auth/"):
        return "jwt"
    return "session"
