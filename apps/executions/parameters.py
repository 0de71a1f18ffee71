"""From what a caller sent to what an execution stores and what its process receives.

1. templates in values are rendered (sandboxed Jinja; ``kv``, ``pack.config``, ``system``, plus whatever the
   caller adds, e.g. ``payload`` for rules);
2. declared defaults are applied; unknown parameters are rejected;
3. the result is validated against the action's parameter schema; every failing field is named;
4. secret parameters — declared ``secret: true`` or rendered from a secret datastore key — are stored as
   ``"********"``; their real values are kept only encrypted (AES-256-GCM) until the worker needs them.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from django.utils import timezone
from jsonschema import Draft202012Validator

from apps.actions.schema import parameters_schema
from apps.core.templating import TemplateError, contains_template, render_value
from apps.keys.crypto import get_ring
from apps.keys.templating import KV

REDACTED = "********"
SECRET_AAD = "attune:execution-secret-parameters"


class ParameterError(Exception):
    def __init__(self, errors: dict[str, list[str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{k}: {', '.join(v)}" for k, v in errors.items()))


@dataclass
class PreparedParameters:
    stored: dict[str, Any]
    secrets: dict[str, Any] = field(default_factory=dict)
    secret_values: list[str] = field(default_factory=list)  # plaintexts to mask in output

    def encrypted_secrets(self) -> str:
        if not self.secrets:
            return ""
        return get_ring().encrypt({"values": self.secrets, "mask": self.secret_values}, SECRET_AAD)[0]


def template_context(action, user=None, extra: dict[str, Any] | None = None) -> tuple[dict[str, Any], KV]:
    from apps.packs.services import pack_config, secret_fields

    kv = KV(pack=action.pack.ref, user=getattr(user, "username", "") or "")
    config = pack_config(action.pack)
    for name in secret_fields(action.pack):  # a secret pack setting stays secret downstream, like a secret key
        if config.get(name) is not None:
            kv.tracker.add(config[name])
    context: dict[str, Any] = {
        "kv": kv,
        "pack": {"ref": action.pack.ref, "config": config},
        "system": {"timestamp": timezone.now().isoformat(), "user": getattr(user, "username", None)},
    }
    if extra:
        context.update(extra)
    return context, kv


_validators: dict[str, Draft202012Validator] = {}


def _validator(declared: dict[str, Any]) -> Draft202012Validator:
    """One compiled validator per distinct parameter declaration (building one costs more than using it)."""
    key = json.dumps(declared, sort_keys=True, default=str)
    found = _validators.get(key)
    if found is None:
        if len(_validators) > 1024:
            _validators.clear()
        found = _validators[key] = Draft202012Validator(parameters_schema(declared))
    return found


def prepare(action, raw: Any, *, user=None, context: dict[str, Any] | None = None,
            secret_names: set[str] | frozenset[str] = frozenset(), mask_values: list[str] | None = None
            ) -> PreparedParameters:
    """Render, default, validate and split ``raw`` parameters for ``action``. Raises ParameterError."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParameterError({"parameters": ["must be an object of parameter name to value"]})
    declared: dict[str, Any] = action.parameters or {}
    errors: dict[str, list[str]] = {}
    for name in raw:
        if name not in declared:
            known = ", ".join(sorted(declared)) or "none"
            errors.setdefault(name, []).append(f"unknown parameter for {action.ref} (declared: {known})")

    values: dict[str, Any] = {}
    kv = None
    if any(contains_template(v) for v in raw.values()):
        ctx, kv = template_context(action, user, context)
        for name, value in raw.items():
            try:
                values[name] = render_value(value, ctx)
            except TemplateError as exc:
                errors.setdefault(name, []).append(str(exc))
    else:
        values = dict(raw)

    for name, spec in declared.items():
        if name not in values and isinstance(spec, dict) and "default" in spec:
            values[name] = copy.deepcopy(spec["default"])
    known_values = {k: v for k, v in values.items() if k in declared}
    # Schema errors are reported too, not only unknown names; the unknown ones are left out of the check.
    validator = _validator(declared)
    for error in validator.iter_errors(known_values):
        if error.validator == "required":
            missing = error.message.split("'")[1] if "'" in error.message else "parameters"
            if missing not in errors:  # a failed template already explains why the value is absent
                errors.setdefault(missing, []).append("this parameter is required")
        else:
            name = str(error.absolute_path[0]) if error.absolute_path else "parameters"
            if name in errors and any("template" in m for m in errors[name]):
                continue  # the template error already explains it
            where = ".".join(str(p) for p in list(error.absolute_path)[1:])
            errors.setdefault(name, []).append((f"{where}: " if where else "") + error.message)
    if errors:
        raise ParameterError(errors)

    secret_names = set(secret_names) | {n for n, s in declared.items() if isinstance(s, dict) and s.get("secret")}
    if kv is not None:
        secret_names |= {n for n, v in values.items() if kv.tracker.taints(v)}
    secrets = {n: values[n] for n in secret_names if n in values}
    stored = {n: (REDACTED if n in secrets else v) for n, v in values.items()}
    mask = ([_mask_text(v) for v in secrets.values() if v not in (None, "")] + (kv.tracker.values if kv else [])
            + list(mask_values or []))
    return PreparedParameters(stored=stored, secrets=secrets, secret_values=sorted(set(mask), key=len, reverse=True))


def _mask_text(value: Any) -> str:
    import json

    return value if isinstance(value, str) else json.dumps(value)


def decrypt_secrets(token: str) -> tuple[dict[str, Any], list[str]]:
    if not token:
        return {}, []
    data = get_ring().decrypt(token, SECRET_AAD)
    return data.get("values", {}), data.get("mask", [])


def full_parameters(execution) -> tuple[dict[str, Any], list[str]]:
    """The real parameters of an execution (secrets decrypted) and the plaintexts to mask in its output."""
    secrets, mask = decrypt_secrets(execution.secret_parameters)
    values = dict(execution.parameters or {})
    values.update(secrets)
    return values, mask


def mask(value: Any, secret_values: list[str]) -> Any:
    """Replace every secret plaintext inside a JSON value with the redaction marker."""
    if not secret_values:
        return value
    if isinstance(value, str):
        for secret in secret_values:
            if secret and secret in value:
                value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {k: mask(v, secret_values) for k, v in value.items()}
    if isinstance(value, list):
        return [mask(v, secret_values) for v in value]
    return value


def reencrypt_execution_secrets(batch_size: int = 500) -> int:
    """Re-encrypt stored secret parameters under the newest key version (part of key rotation)."""
    from .models import Execution

    ring = get_ring()
    prefix = f"v{ring.current_version}:"
    changed = 0
    stale = Execution.objects.exclude(secret_parameters="").exclude(secret_parameters__startswith=prefix)
    for execution in stale.only("id", "secret_parameters").iterator(chunk_size=batch_size):
        data = ring.decrypt(execution.secret_parameters, SECRET_AAD)
        Execution.objects.filter(pk=execution.pk).update(secret_parameters=ring.encrypt(data, SECRET_AAD)[0])
        changed += 1
    return changed
