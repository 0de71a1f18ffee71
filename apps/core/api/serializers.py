"""Serializer building blocks shared by the apps' APIs."""
from __future__ import annotations

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
