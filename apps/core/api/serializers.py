"""Serializer building blocks shared by the apps' APIs."""
from __future__ import annotations

import threading
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from rest_framework import serializers


def check_json_schema(value: Any, field: str = "schema") -> Any:
    """Reject a JSON Schema that is itself invalid, naming the bad keyword."""
    if value in (None, {}):
        return value
    if not isinstance(value, dict):
        raise serializers.ValidationError(f"{field} must be a JSON Schema object")
    try:
        Draft202012Validator.check_schema(value)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        raise serializers.ValidationError(f"invalid JSON Schema at {where}: {exc.message}") from None
    return value


class CachedFieldsMixin:
    """Build a ModelSerializer's fields once per class and copy them per instance.

    DRF introspects the model on every instantiation; on hot endpoints (running an action, receiving an
    event) that costs more than the database work. The copy is the same deep copy DRF makes of declared
    fields, so instances never share field state."""

    _fields_template: dict | None = None

    def get_fields(self):
        import copy

        cls = type(self)
        if cls.__dict__.get("_fields_template") is None:
            cls._fields_template = super().get_fields()
        return copy.deepcopy(cls._fields_template)

    @classmethod
    def represent(cls, instance) -> dict:
        """What ``cls(instance).data`` holds, through serializers whose fields are bound once and reused (no
        context: for serializers whose output does not depend on the request). On the execution hot path,
        building and binding the fields per response cost more than the rest. A serializer is used by one
        thread at a time: borrowed from a small free list, given back after (not thread-local: under ASGI
        every request runs on a new thread, which would never find its own)."""
        with _represent_lock:
            free = _represent_free.setdefault(cls, [])
            serializer = free.pop() if free else None
        if serializer is None:
            serializer = cls()
        try:
            return serializer.to_representation(instance)
        finally:
            with _represent_lock:
                if len(free) < 32:
                    free.append(serializer)


_represent_free: dict[type, list] = {}
_represent_lock = threading.Lock()
