"""Permission checks for every endpoint.

A viewset names its ``resource`` (one of :data:`apps.accounts.models.RESOURCES`); DRF actions map to
grant actions (list/retrieve → view, create → create, update → update, destroy → delete); custom
actions declare theirs in ``action_permissions`` (e.g. ``{"execute": "execute"}``). Superusers may do
everything. Grants limited to packs are checked against the object's pack (object level) and the
pack a create or update request names (the body's ``pack`` field, or the view's ``pack_field``).
"""
from __future__ import annotations

from dataclasses import dataclass

from rest_framework import permissions

DEFAULT_ACTION_MAP = {
    "list": "view",
    "retrieve": "view",
    "metadata": "view",
    "create": "create",
    "update": "update",
    "partial_update": "update",
    "destroy": "delete",
}


@dataclass(frozen=True)
class Grant:
    resource: str
    actions: frozenset[str]
    packs: frozenset[str] | None  # None: every pack

    def covers(self, resource: str, action: str) -> bool:
        return self.resource in ("*", resource) and ("*" in self.actions or action in self.actions)


def grants_for(user) -> list[Grant]:
    """Every grant the user holds, each narrowed by its assignment's pack limit. Cached per user object."""
    cached = getattr(user, "_attune_grants", None)
    if cached is not None:
        return cached
    grants: list[Grant] = []
    if user.is_authenticated:
        for assignment in user.assignments.select_related("permission_set"):
            limit = frozenset(assignment.packs) if assignment.packs else None
            for raw in assignment.permission_set.grants:
                packs = frozenset(raw["packs"]) if raw.get("packs") else None
                if limit is not None:
                    packs = limit if packs is None else packs & limit
                grants.append(Grant(raw["resource"], frozenset(raw["actions"]), packs))
    user._attune_grants = grants
    return grants


ANY_PACK = object()  # collection-level check: a grant limited to some packs is enough


def has_grant(user, resource: str, action: str, pack=ANY_PACK) -> bool:
    """May ``user`` do ``action`` on ``resource``?

    ``pack`` is the pack of the object concerned: a pack ref, ``None`` for an object outside any pack (a
    system key, an identity) — which only unrestricted grants cover — or :data:`ANY_PACK` for a
    collection-level check, where a grant limited to some packs suffices (lists are narrowed separately).
    """
    if not user or not user.is_authenticated or not user.is_active:
        return False
    if user.is_superuser:
        return True
    for grant in grants_for(user):
        if grant.covers(resource, action):
            if grant.packs is None or pack is ANY_PACK or pack in grant.packs:
                return True
    return False


def visible_packs(user, resource: str, action: str = "view") -> frozenset[str] | None:
    """The packs whose ``resource`` rows ``user`` may ``action``: ``None`` means all of them."""
    if user.is_superuser:
        return None
    packs: set[str] = set()
    for grant in grants_for(user):
        if grant.covers(resource, action):
            if grant.packs is None:
                return None
            packs |= grant.packs
    return frozenset(packs)


def has_unrestricted_grant(user, resource: str, action: str) -> bool:
    if user.is_superuser:
        return True
    return any(g.covers(resource, action) and g.packs is None for g in grants_for(user))


def required_action(view) -> str:
    name = getattr(view, "action", None) or ""
    custom = getattr(view, "action_permissions", {}) or {}
    if name in custom:
        return custom[name]
    return DEFAULT_ACTION_MAP.get(name, "view" if view.request.method in permissions.SAFE_METHODS else "update")


def body_pack(request, view) -> str | None:
    """The pack a create or update request puts its object in: the body's ``pack`` (or ``view.pack_field``)."""
    data = request.data
    pack = data.get(getattr(view, "pack_field", "pack")) if isinstance(data, dict) else None
    return pack if isinstance(pack, str) else None


def object_pack(obj) -> str | None:
    getter = getattr(obj, "pack_ref_for_permissions", None)
    if getter is not None:
        return getter()
    pack = getattr(obj, "pack", None)
    if pack is not None and hasattr(pack, "ref"):
        return pack.ref
    return None


class AttunePermission(permissions.BasePermission):
    """Authentication required; then the grant for (resource, action)."""

    message = "You do not have permission to perform this action."

    def has_permission(self, request, view) -> bool:
        user = request.user
        if not user or not user.is_authenticated:
            return False
        resource = getattr(view, "resource", None)
        if resource is None:
            # Endpoints about the caller themselves (auth/me, tokens) need only authentication.
            return True
        action = required_action(view)
        if getattr(view, "action", None) == "create":
            pack = body_pack(request, view)
            if pack is not None:
                return has_grant(user, resource, action, pack)
        # Pack-limited grants are checked again per object, and lists are narrowed to the visible packs.
        return has_grant(user, resource, action)

    def has_object_permission(self, request, view, obj) -> bool:
        resource = getattr(view, "resource", None)
        if resource is None:
            return True
        pack = ANY_PACK if getattr(view, "pack_lookup", None) == "*" else object_pack(obj)
        action = required_action(view)
        if not has_grant(request.user, resource, action, pack):
            return False
        if getattr(view, "action", None) in ("update", "partial_update"):
            # Moving the object to another pack needs the grant there too.
            target = body_pack(request, view)
            if target is not None and target != pack:
                return has_grant(request.user, resource, action, target)
        return True


class IsSuperuser(permissions.BasePermission):
    def has_permission(self, request, view) -> bool:
        return bool(request.user and request.user.is_authenticated and request.user.is_superuser)
