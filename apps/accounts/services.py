"""Account operations shared by migrations, `attune setup` and the API."""
from __future__ import annotations

from .builtin import BUILTIN_SETS


def sync_builtin_sets(PermissionSet=None) -> None:
    """Create or refresh the built-in permission sets so upgrades pick up changed grants."""
    if PermissionSet is None:
        from .models import PermissionSet
    for name, spec in BUILTIN_SETS.items():
        PermissionSet.objects.update_or_create(
            name=name, defaults={"description": spec["description"], "grants": spec["grants"], "builtin": True}
        )
