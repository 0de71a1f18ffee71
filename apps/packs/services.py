"""Pack operations behind the API: installing an uploaded archive, and a pack's config (secrets encrypted).

Pack config storage
-------------------
``Pack.config`` holds::

    {"values":  {<non-secret name>: <value>, ...},
     "secrets": {<secret name>: "v<key version>:<base64 AES-256-GCM ciphertext>", ...}}

A top-level property of ``config_schema`` marked ``secret: true`` is kept only in ``secrets``, encrypted with
the datastore key ring (:func:`apps.keys.crypto.get_ring`) and bound to ``pack-config:<ref>:<name>`` as
associated data, so a ciphertext copied to another pack or field does not decrypt. Clear text never reaches
the row. :func:`pack_config` returns the real values (templates' ``pack.config``, runners);
:func:`redacted_pack_config` shows secrets as ``"********"`` (API reads). A legacy config that is a plain
mapping (no ``values``/``secrets`` envelope) is read as plain values.

``config_schema`` is either a JSON Schema (``{type: object, properties: {...}, required: [...]}``) or the
StackStorm-style flat mapping ``{name: {type, required, default, secret, ...}}``; both validate the same way.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import posixpath
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import yaml
from django.conf import settings
from django.db import transaction
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from apps.actions.schema import parameters_schema
from apps.core import generation
from apps.core.refs import PACK_REF_RE
from apps.keys.crypto import KeyRingError, get_ring

from .models import Pack
from .registrar import PackError, RegistrationResult, _load_yaml, register_pack

try:  # POSIX; installs are serialised per host with an advisory lock
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

log = logging.getLogger(__name__)

REDACTED = "********"

# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


class ConfigError(Exception):
    """Config values failed validation; ``errors`` are ``"<path>: <message>"`` strings."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("; ".join(errors))


def config_aad(ref: str, name: str) -> str:
    return f"pack-config:{ref}:{name}"


def config_json_schema(schema: Any) -> dict[str, Any]:
    """``config_schema`` as one JSON Schema object (the flat StackStorm form is converted)."""
    if not isinstance(schema, dict) or not schema:
        return {"type": "object"}
    if "properties" in schema or schema.get("type") == "object" or "$schema" in schema:
        schema = copy.deepcopy(schema)
        schema.setdefault("type", "object")
        return schema
    if all(isinstance(spec, dict) for spec in schema.values()):
        return parameters_schema(schema)
    return copy.deepcopy(schema)


def _properties(schema: Any) -> dict[str, dict]:
    """Top-level property declarations as written (``secret``/``default`` included)."""
    if not isinstance(schema, dict) or not schema:
        return {}
    if "properties" in schema or schema.get("type") == "object" or "$schema" in schema:
        props = schema.get("properties") or {}
    else:
        props = schema
    return {name: spec for name, spec in props.items() if isinstance(spec, dict)} if isinstance(props, dict) else {}


def secret_fields(pack: Pack) -> set[str]:
    return {name for name, spec in _properties(pack.config_schema).items() if spec.get("secret") is True}


def _stored(pack: Pack) -> tuple[dict[str, Any], dict[str, str]]:
    config = pack.config or {}
    if not isinstance(config, dict):
        return {}, {}
    if "values" in config and isinstance(config["values"], dict) and set(config) <= {"values", "secrets"}:
        secrets = config.get("secrets") or {}
        return dict(config["values"]), dict(secrets) if isinstance(secrets, dict) else {}
    return dict(config), {}  # legacy plain mapping


def pack_config(pack: Pack) -> dict[str, Any]:
    """The pack's real config (secrets decrypted, schema defaults filled in), for templates (``pack.config``)
    and runners.

    A secret that no longer decrypts (its key version retired) is left out and logged, so a template using
    it fails naming the missing variable instead of receiving garbage.
    """
    values, secrets = _stored(pack)
    if secrets:
        ring = get_ring()
        for name, token in secrets.items():
            try:
                values[name] = ring.decrypt(token, config_aad(pack.ref, name))
            except (KeyRingError, ValueError) as exc:
                log.error("pack %s: config secret %r does not decrypt: %s", pack.ref, name, exc)
    return _with_defaults(pack, values)


def _with_defaults(pack: Pack, values: dict[str, Any]) -> dict[str, Any]:
    """Fill in top-level ``default``s the stored config lacks (a pack works before anyone PUTs a config)."""
    for name, spec in _properties(pack.config_schema).items():
        if name not in values and "default" in spec:
            values[name] = copy.deepcopy(spec["default"])
    return values


def redacted_pack_config(pack: Pack) -> dict[str, Any]:
    """The pack's config with every secret (stored encrypted, or declared secret now) shown as ``********``."""
    values, secrets = _stored(pack)
    values.update({name: REDACTED for name in secrets})
    hidden = set(secrets) | secret_fields(pack)
    return {name: (REDACTED if name in hidden else value) for name, value in _with_defaults(pack, values).items()}


def _path(parts) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def validate_pack_config(pack: Pack, values: Any) -> dict[str, Any]:
    """Apply top-level defaults and validate ``values`` against the pack's ``config_schema``.

    A secret field sent as ``"********"`` (a redacted read sent back) keeps its stored value. Returns the real
    values; raises :class:`ConfigError` naming every failing field. Messages about secret fields never repeat
    the value.
    """
    if not isinstance(values, dict):
        raise ConfigError(["config: must be an object of config name to value"])
    values = dict(values)
    props = _properties(pack.config_schema)
    secrets = secret_fields(pack)
    errors: list[str] = []

    current: dict[str, Any] | None = None
    for name in sorted(secrets):
        if values.get(name) == REDACTED:
            if current is None:
                current = pack_config(pack)
            if name in current:
                values[name] = current[name]
            else:
                errors.append(f"{name}: no stored secret to keep; send the real value")
    for name, spec in props.items():
        if name not in values and "default" in spec:
            values[name] = copy.deepcopy(spec["default"])

    schema = config_json_schema(pack.config_schema)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = ".".join(str(p) for p in exc.absolute_path) or "(root)"
        raise ConfigError([f"config_schema: the pack's config_schema is invalid at {where}: {exc.message}"]) from None
    validator = Draft202012Validator(schema)
    for error in sorted(validator.iter_errors(values), key=lambda e: [str(p) for p in e.absolute_path]):
        parts = list(error.absolute_path)
        if error.validator == "required" and isinstance(error.instance, dict):
            for missing in error.validator_value:
                if missing not in error.instance:
                    errors.append(f"{_path([*parts, missing])}: this field is required")
            continue
        where = _path(parts) or "config"
        if parts and parts[0] in secrets:
            errors.append(f"{where}: secret value fails the '{error.validator}' rule of the schema")
        else:
            errors.append(f"{where}: {error.message}")
    if errors:
        raise ConfigError(list(dict.fromkeys(errors)))
    return values


def stored_config(pack: Pack, values: dict[str, Any]) -> dict[str, Any]:
    """The ``Pack.config`` document for real ``values``: secrets encrypted, the rest as is."""
    secrets = secret_fields(pack)
    ring = get_ring()
    return {
        "values": {name: value for name, value in values.items() if name not in secrets},
        "secrets": {
            name: ring.encrypt(value, config_aad(pack.ref, name))[0]
            for name, value in values.items()
            if name in secrets
        },
    }


def set_pack_config(pack: Pack, values: Any) -> dict[str, Any]:
    """Validate, encrypt and save a whole new config (PUT semantics). Returns the real values."""
    real = validate_pack_config(pack, values)
    pack.config = stored_config(pack, real)
    pack.save(update_fields=["config", "updated"])
    return real


@transaction.atomic
def reencrypt_pack_configs() -> int:
    """Re-encrypt every pack-config secret under the current key version (after a key rotation)."""
    ring = get_ring()
    changed = 0
    for pack in Pack.objects.select_for_update().exclude(config={}):
        values, secrets = _stored(pack)
        stale = {n: t for n, t in secrets.items() if not t.startswith(f"v{ring.current_version}:")}
        if not stale:
            continue
        for name, token in stale.items():
            secrets[name] = ring.encrypt(ring.decrypt(token, config_aad(pack.ref, name)), config_aad(pack.ref, name))[0]
        pack.config = {"values": values, "secrets": secrets}
        pack.save(update_fields=["config", "updated"])
        changed += len(stale)
    return changed


# --------------------------------------------------------------------------------------------------
# Install from an uploaded archive
# --------------------------------------------------------------------------------------------------

MAX_INSTALL_BYTES = 100 * 1024 * 1024  # total uncompressed size of the archive's files
MAX_INSTALL_MEMBERS = 10_000
IGNORED_TOP_LEVEL = {"__MACOSX", ".DS_Store"}


class InstallError(Exception):
    """The upload cannot be installed: a 400 naming ``field`` (or ``detail`` when field is None)."""

    def __init__(self, message: str, field: str | None = "file") -> None:
        self.message = message
        self.field = field
        super().__init__(message)


class InstallConflict(Exception):
    """The pack's ref is owned by something an upload must not replace (a shipped pack): a 409."""


@dataclass
class InstallResult:
    pack: Pack
    registration: RegistrationResult
    created: bool
    path: Path


def install_dir() -> Path:
    return Path(settings.ATTUNE_HOME).resolve() / "packs"


def shipped_pack_refs() -> set[str]:
    """Refs of the packs shipped in the repository's ``packs/`` (by directory name and by manifest ref)."""
    base = Path(settings.BASE_DIR) / "packs"
    refs: set[str] = set()
    if not base.is_dir():
        return refs
    for directory in base.iterdir():
        manifest = directory / "pack.yaml"
        if not manifest.is_file():
            continue
        refs.add(directory.name)
        try:
            data = yaml.safe_load(manifest.read_text())
        except (yaml.YAMLError, OSError, UnicodeDecodeError):
            continue
        if isinstance(data, dict):
            ref = data.get("ref") or data.get("name")
            if isinstance(ref, str):
                refs.add(ref)
    return refs


def manifest_ref(root: Path) -> str:
    """The ref declared by ``root/pack.yaml`` (``ref``, else ``name``); PackError when missing or invalid."""
    errors: list[str] = []
    if not (root / "pack.yaml").is_file():
        raise PackError(root, ["pack.yaml: missing (every pack needs one)"])
    manifest = _load_yaml(root / "pack.yaml", errors, root) or {}
    ref = manifest.get("ref") or manifest.get("name")
    if not isinstance(ref, str) or not PACK_REF_RE.match(ref):
        errors.append(f"pack.yaml: ref: {ref!r} is not a valid pack ref (lowercase, ^[a-z][a-z0-9_-]*$)")
    if errors:
        raise PackError(root, errors)
    return ref


def _member_problem(member: tarfile.TarInfo) -> str | None:
    name = member.name
    if "\x00" in name:
        return f"{name!r}: NUL in member name"
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return f"{name}: absolute path"
    if ".." in PurePosixPath(name).parts:
        return f"{name}: path leaves the archive ('..')"
    if member.issym():
        target = member.linkname
        if target.startswith(("/", "\\")):
            return f"{name}: symlink to an absolute path ({target})"
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
        if resolved == ".." or resolved.startswith("../"):
            return f"{name}: symlink pointing outside the pack ({target})"
    elif member.islnk():
        target = member.linkname
        if target.startswith(("/", "\\")) or ".." in PurePosixPath(target).parts:
            return f"{name}: hard link pointing outside the pack ({target})"
    elif not (member.isreg() or member.isdir()):
        return f"{name}: device files, FIFOs and other special files are not allowed"
    return None


def _safe_extract(fileobj: BinaryIO, dest: Path) -> None:
    """Extract a .tar.gz into ``dest`` after checking every member; InstallError on anything unsafe."""
    not_archive = "not a gzip-compressed tar archive (.tar.gz)"
    with contextlib.suppress(AttributeError, OSError):
        fileobj.seek(0)
    try:
        tar = tarfile.open(fileobj=fileobj, mode="r:gz")
    except (tarfile.TarError, EOFError, zlib.error, OSError):
        raise InstallError(not_archive) from None
    with tar:
        members: list[tarfile.TarInfo] = []
        total = 0
        try:
            for member in tar:
                members.append(member)
                if len(members) > MAX_INSTALL_MEMBERS:
                    raise InstallError(f"the archive has more than {MAX_INSTALL_MEMBERS} members")
                problem = _member_problem(member)
                if problem:
                    raise InstallError(f"unsafe archive member {problem}")
                if member.isreg():
                    total += member.size
                    if total > MAX_INSTALL_BYTES:
                        raise InstallError(f"the archive unpacks to more than {MAX_INSTALL_BYTES} bytes")
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            raise InstallError(f"{not_archive}: {exc}" if not members else f"corrupt archive: {exc}") from None
        if not members:
            raise InstallError("the archive is empty")
        try:
            tar.extractall(dest, members=members, filter="data")
        except tarfile.FilterError as exc:
            raise InstallError(f"unsafe archive member: {exc}") from None
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            raise InstallError(f"corrupt archive: {exc}") from None
    _check_extracted(dest)


def _check_extracted(dest: Path) -> None:
    """Every symlink resolves inside ``dest``; every directory and file is readable by us (and removable)."""
    real = os.path.realpath(dest)
    for dirpath, dirnames, filenames in os.walk(dest):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                target = os.path.realpath(path)
                if os.path.commonpath([real, target]) != real:
                    raise InstallError(f"unsafe archive member {os.path.relpath(path, dest)}: symlink pointing outside the pack")
            elif name in dirnames:
                os.chmod(path, os.stat(path).st_mode | 0o700)
            else:
                os.chmod(path, os.stat(path).st_mode | 0o600)


def _pack_root(extract: Path) -> Path:
    if (extract / "pack.yaml").is_file():
        return extract
    entries = [p for p in extract.iterdir() if p.name not in IGNORED_TOP_LEVEL and not p.name.startswith("._")]
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink() and (entries[0] / "pack.yaml").is_file():
        return entries[0]
    raise InstallError("no pack.yaml at the archive's root or in its single top-level directory")


@contextlib.contextmanager
def _install_lock(directory: Path):
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(directory / ".install.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def install_pack(fileobj: BinaryIO, authorize: Callable[[str, Pack | None], None] | None = None) -> InstallResult:
    """Install the pack in an uploaded ``.tar.gz`` into ``ATTUNE_HOME/packs/<ref>`` and register it.

    The archive is checked and extracted into a temporary directory next to the installed packs; the pack
    is registered from there inside a transaction, and only then is the directory swapped into place. If
    anything fails, the previously installed copy and its rows are untouched. ``authorize(ref, existing)``
    runs once the ref is known and raises to refuse (e.g. PermissionDenied).

    Raises InstallError (400), PackError (400 with every error), InstallConflict (409).
    """
    packs_dir = install_dir()
    packs_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".install-", dir=packs_dir))
    try:
        extract = staging / "extract"
        extract.mkdir()
        _safe_extract(fileobj, extract)
        root = _pack_root(extract)
        _check_extracted(root)  # links must stay inside the pack itself, not merely inside the archive
        ref = manifest_ref(root)
        existing = Pack.objects.filter(ref=ref).first()
        if authorize is not None:
            authorize(ref, existing)
        if ref in shipped_pack_refs():
            raise InstallConflict(f"{ref} is a pack shipped with Attune; it cannot be replaced by an upload.")
        final = packs_dir / ref
        if existing is not None and existing.path and Path(existing.path) != final:
            raise InstallConflict(
                f"pack {ref} was registered from {existing.path}; an upload would take it over. "
                "Re-register it from that directory instead, or delete the pack first."
            )
        with _install_lock(packs_dir):
            return _register_and_swap(ref, root, final, staging / "previous", created=existing is None)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _register_and_swap(ref: str, root: Path, final: Path, previous: Path, created: bool) -> InstallResult:
    moved_old = moved_new = False
    try:
        with transaction.atomic():
            registration = register_pack(root)  # PackError: nothing written, nothing moved
            Pack.objects.filter(ref=ref).update(path=str(final))
            generation.changed()  # no save signal for update(): cached pack rows must see the new path
            if final.exists() or final.is_symlink():
                os.rename(final, previous)
                moved_old = True
            os.rename(root, final)
            moved_new = True
    except BaseException:
        # Put the filesystem back the way it was: the transaction has been rolled back.
        if moved_new:
            os.rename(final, root)
        if moved_old:
            os.rename(previous, final)
        raise
    return InstallResult(pack=Pack.objects.get(ref=ref), registration=registration, created=created, path=final)
