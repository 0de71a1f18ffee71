"""Register a pack directory (SPEC §3): load every YAML file, validate it with the same serializers the
API uses, report every error with its file (and field), and write all-or-nothing.

Re-registering updates rows in place and removes rows that came from files now gone; rows created
through the API (``source=api``) are kept.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from django.conf import settings
from django.db import transaction
from django.db.models import ProtectedError, RestrictedError
from django.utils import timezone

from apps.core.models import Source
from apps.core.refs import PACK_REF_RE

from .models import Pack


class PackError(Exception):
    def __init__(self, path: Path | str, errors: list[str]) -> None:
        self.path = str(path)
        self.errors = errors
        super().__init__(f"pack at {path} has {len(errors)} error(s):\n  " + "\n  ".join(errors))


@dataclass
class RegistrationResult:
    pack: str
    created: dict[str, int] = field(default_factory=dict)
    updated: dict[str, int] = field(default_factory=dict)
    removed: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        parts = []
        for kind in sorted(set(self.created) | set(self.updated) | set(self.removed)):
            parts.append(
                f"{kind}: {self.created.get(kind, 0)} new, {self.updated.get(kind, 0)} updated, "
                f"{self.removed.get(kind, 0)} removed"
            )
        return f"pack {self.pack} registered ({'; '.join(parts) or 'no components'})"


def _flatten(detail: Any, prefix: str = "") -> list[str]:
    """DRF error detail → ["field: message", ...]."""
    if isinstance(detail, dict):
        out: list[str] = []
        for key, value in detail.items():
            name = prefix if key in ("non_field_errors", "detail") else (f"{prefix}.{key}" if prefix else str(key))
            out.extend(_flatten(value, name))
        return out
    if isinstance(detail, list):
        out = []
        for item in detail:
            out.extend(_flatten(item, prefix))
        return out
    return [f"{prefix}: {detail}" if prefix else str(detail)]


def _load_yaml(path: Path, errors: list[str], root: Path) -> dict | None:
    rel = path.relative_to(root)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        errors.append(f"{rel}{where}: invalid YAML: {getattr(exc, 'problem', exc)}")
        return None
    except OSError as exc:
        errors.append(f"{rel}: cannot read: {exc.strerror}")
        return None
    if not isinstance(data, dict):
        errors.append(f"{rel}: must be a YAML mapping, got {type(data).__name__}")
        return None
    return _json_safe(data)


def _json_safe(value):
    """YAML reads unquoted dates (``fire_at: 2026-01-01T09:00:00Z``) as datetimes and ``on:`` as true;
    the pack format means text."""
    import datetime as dt

    if isinstance(value, dict):
        # YAML 1.1 reads an unquoted `on:` key (retry policies) as the boolean true.
        return {("on" if k is True else "off" if k is False else k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat().replace("+00:00", "Z")
    return value


def content_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


# (kind, folder, serializer import path, model import path) in dependency order.
COMPONENTS = [
    ("triggers", "triggers", "apps.triggers.api.serializers.TriggerSerializer"),
    ("actions", "actions", "apps.actions.api.serializers.ActionSerializer"),
    ("sensors", "sensors", "apps.triggers.api.serializers.SensorSerializer"),
    ("rules", "rules", "apps.rules.api.serializers.RuleSerializer"),
    ("policies", "policies", "apps.executions.api.serializers.PolicySerializer"),
]


def _import(path: str):
    module, _, name = path.rpartition(".")
    return getattr(__import__(module, fromlist=[name]), name)


def register_pack(path: str | Path) -> RegistrationResult:
    """Validate and register the pack at ``path``; raise :class:`PackError` listing every problem."""
    root = Path(path).resolve()
    errors: list[str] = []
    if not root.is_dir():
        raise PackError(root, [f"{root}: not a directory"])
    manifest_path = root / "pack.yaml"
    if not manifest_path.is_file():
        raise PackError(root, ["pack.yaml: missing (every pack needs one)"])
    manifest = _load_yaml(manifest_path, errors, root) or {}
    ref = manifest.get("ref") or manifest.get("name")
    if not isinstance(ref, str) or not PACK_REF_RE.match(ref):
        errors.append(f"pack.yaml: ref: {ref!r} is not a valid pack ref (lowercase, ^[a-z][a-z0-9_-]*$)")
        raise PackError(root, errors)

    files: dict[str, list[tuple[Path, dict]]] = {}
    for kind, folder, _ in COMPONENTS:
        loaded = []
        for file in sorted((root / folder).glob("*.y*ml")) if (root / folder).is_dir() else []:
            data = _load_yaml(file, errors, root)
            if data is not None:
                loaded.append((file, data))
        files[kind] = loaded
    workflow_files = sorted((root / "actions" / "workflows").glob("*.y*ml")) if (root / "actions" / "workflows").is_dir() else []

    result = RegistrationResult(pack=ref)
    try:
        with transaction.atomic():
            pack = _register_manifest(root, ref, manifest, errors)
            if pack is not None:
                seen: dict[str, set[int]] = {}
                for kind, _folder, serializer_path in COMPONENTS:
                    seen[kind] = _register_components(
                        pack, kind, files[kind], _import(serializer_path), errors, root, result
                    )
                _register_workflows(pack, root, workflow_files, errors, seen["actions"])
                if not errors:
                    # Dependents first (a rule before the action it fires), so removing both files works.
                    for kind, _folder, serializer_path in reversed(COMPONENTS):
                        _prune(pack, kind, _import(serializer_path).Meta.model, seen[kind], errors, result)
            if errors:
                raise PackError(root, errors)
    except PackError:
        raise
    return result


def _register_manifest(root: Path, ref: str, manifest: dict, errors: list[str]) -> Pack | None:
    from .api.serializers import PackSerializer

    known = {"ref", "name", "label", "description", "version", "author", "email", "dependencies", "config_schema",
             "keywords", "python_versions", "contributors", "stackstorm_version", "system"}
    for key in sorted(set(manifest) - known):
        errors.append(f"pack.yaml: {key}: unknown field")
    data = {k: v for k, v in manifest.items() if k in PackSerializer.Meta.fields}
    data["ref"] = ref
    data.setdefault("label", ref.replace("_", " ").title())
    instance = Pack.objects.filter(ref=ref).first()
    serializer = PackSerializer(instance, data=data)
    if not serializer.is_valid():
        errors.extend(f"pack.yaml: {msg}" for msg in _flatten(serializer.errors))
        return None
    pack = serializer.save(source=Source.PACK, path=str(root), registered_at=timezone.now(), content_hash=content_hash(root))
    return pack


def _register_components(pack, kind, loaded, serializer_cls, errors, root, result) -> set[int]:
    model = serializer_cls.Meta.model
    seen: set[int] = set()
    for file, data in loaded:
        rel = str(file.relative_to(root))
        data = dict(data)
        if "pack" in data and data["pack"] != pack.ref:
            errors.append(f"{rel}: pack: {data['pack']!r} does not match the pack being registered ({pack.ref})")
            continue
        data["pack"] = pack.ref
        if "name" not in data:
            data["name"] = file.stem
        unknown = set(data) - set(serializer_cls.Meta.fields)
        if unknown:
            errors.append(f"{rel}: unknown field(s): {', '.join(sorted(unknown))}")
            continue
        instance = model.objects.filter(pack=pack, name=data["name"]).first()
        serializer = serializer_cls(instance, data=data)
        if not serializer.is_valid():
            errors.extend(f"{rel}: {msg}" for msg in _flatten(serializer.errors))
            continue
        obj = serializer.save(source=Source.PACK, file_path=rel)
        seen.add(obj.pk)
        bucket = result.updated if instance is not None else result.created
        bucket[kind] = bucket.get(kind, 0) + 1
    return seen


def _prune(pack, kind, model, seen: set[int], errors: list[str], result) -> None:
    """Remove rows of ``kind`` that came from files now gone (API-created rows stay)."""
    stale = model.objects.filter(pack=pack, source=Source.PACK).exclude(pk__in=seen)
    removed = stale.count()
    if not removed:
        return
    try:
        with transaction.atomic():
            stale.delete()
    except (ProtectedError, RestrictedError) as exc:
        blockers = exc.protected_objects if isinstance(exc, ProtectedError) else exc.restricted_objects
        gone = ", ".join(sorted(str(obj) for obj in stale))
        users = ", ".join(sorted({str(obj) for obj in blockers}))
        errors.append(f"{kind}: cannot remove {gone} (file gone): still referenced by {users}")
        return
    result.removed[kind] = removed


def _register_workflows(pack, root: Path, workflow_files: list[Path], errors: list[str], action_ids=None) -> None:
    """Validate each workflow action's definition (every error named with its file and field) and store it
    normalised. Task actions resolve against the database, where this pack's actions were just written."""
    from django.db.models import Q

    from apps.actions.models import Action
    from apps.workflows.language import normalize, validate
    from apps.workflows.models import WorkflowDefinition

    def lookup(ref: str):
        action = Action.objects.filter(ref=ref).first()
        if (action is not None and action_ids is not None and action.pack_id == pack.pk
                and action.source == Source.PACK and action.pk not in action_ids):
            return None  # its file is gone: it is about to be pruned
        return action

    by_entry = {str(f.relative_to(root / "actions")): f for f in workflow_files}
    actions = Action.objects.filter(pack=pack, runner_type__kind="workflow")
    if action_ids is not None:  # skip rows whose files are gone (about to be pruned)
        actions = actions.filter(Q(pk__in=action_ids) | ~Q(source=Source.PACK))
    for action in actions:
        file = by_entry.get(action.entry_point)
        if file is None:
            errors.append(f"{action.file_path or 'actions'}: entry_point: {action.entry_point} not found under actions/")
            continue
        body = _load_yaml(file, errors, root)
        if body is None:
            continue
        problems = validate(body, action_lookup=lookup, parameters=action.parameters or {})
        if problems:
            rel = file.relative_to(root)
            errors.extend(f"{rel}: {problem['field']}: {problem['message']}" for problem in problems)
            continue
        text = file.read_text()
        WorkflowDefinition.objects.update_or_create(
            action=action,
            defaults={"source": text, "definition": normalize(body), "checksum": hashlib.sha256(text.encode()).hexdigest(),
                      "valid": True, "errors": []},
        )


def shipped_pack_dirs() -> list[Path]:
    """Every pack directory under the configured packs paths (shipped ``packs/`` and ``ATTUNE_HOME/packs``)."""
    dirs: list[Path] = []
    for base in settings.ATTUNE_PACKS_PATHS:
        base = Path(base)
        if base.is_dir():
            dirs.extend(sorted(p for p in base.iterdir() if (p / "pack.yaml").is_file()))
    return dirs
