"""Action parameter declarations (SPEC §3) as JSON Schema."""
from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

JSON_TYPES = {"string", "integer", "number", "boolean", "object", "array", "null"}
ATTUNE_KEYWORDS = {"required", "secret", "immutable", "position"}


def parameters_schema(parameters: dict[str, Any]) -> dict[str, Any]:
    """``{name: {type, required, default, secret, ...}}`` → one object schema."""
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, spec in (parameters or {}).items():
        spec = dict(spec or {})
        if spec.pop("required", False) is True:
            required.append(name)
        for key in ATTUNE_KEYWORDS:
            spec.pop(key, None)
        properties[name] = spec
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


def parameter_declaration_errors(parameters: Any) -> list[str]:
    """Every problem in a ``parameters`` block, each naming the parameter and keyword."""
    if parameters in (None, {}):
        return []
    if not isinstance(parameters, dict):
        return ["parameters must be a mapping of parameter name to its declaration"]
    errors: list[str] = []
    for name, spec in parameters.items():
        if not isinstance(name, str) or not name.isidentifier():
            errors.append(f"parameters.{name}: parameter names must be identifiers")
            continue
        if not isinstance(spec, dict):
            errors.append(f"parameters.{name}: declaration must be a mapping (e.g. {{type: string}})")
            continue
        types = spec.get("type")
        type_list = types if isinstance(types, list) else [types]
        if types is not None and not all(t in JSON_TYPES for t in type_list):
            errors.append(f"parameters.{name}.type: {types!r} is not a JSON Schema type ({', '.join(sorted(JSON_TYPES))})")
        for flag in ("required", "secret"):
            if flag in spec and not isinstance(spec[flag], bool):
                errors.append(f"parameters.{name}.{flag}: must be true or false")
    if errors:
        return errors
    try:
        Draft202012Validator.check_schema(parameters_schema(parameters))
    except SchemaError as exc:
        path = list(exc.absolute_path)
        where = ".".join(str(p) for p in path[1:]) if path[:1] == ["properties"] else ".".join(map(str, path))
        errors.append(f"parameters.{where or '(root)'}: {exc.message}")
    return errors
