"""AES-256-GCM under a versioned key ring.

The ring comes from ``ATTUNE_ENCRYPTION_KEYS`` (``"1:<base64>,2:<base64>"``, 32-byte keys) or, when that
is unset, from a key file under ``ATTUNE_HOME`` that is generated on first use (embedded mode). The
highest version encrypts; every version decrypts, so rotation is: add a version, re-encrypt, retire.

Ciphertext format: ``v<version>:<base64(nonce || ciphertext+tag)>``. The key's scope/owner/name is bound
as associated data, so a ciphertext copied onto another key row does not decrypt.
"""
from __future__ import annotations

import base64
import json
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings


class KeyRingError(RuntimeError):
    pass


@dataclass(frozen=True)
class KeyRing:
    keys: dict[int, bytes]

    @property
    def current_version(self) -> int:
        return max(self.keys)

    def encrypt(self, value: Any, aad: str = "") -> tuple[str, int]:
        version = self.current_version
        nonce = os.urandom(12)
        data = AESGCM(self.keys[version]).encrypt(nonce, json.dumps(value).encode(), aad.encode())
        return f"v{version}:" + base64.b64encode(nonce + data).decode(), version

    def decrypt(self, token: str, aad: str = "") -> Any:
        try:
            head, body = token.split(":", 1)
            version = int(head.lstrip("v"))
        except ValueError:
            raise KeyRingError("ciphertext is not in the 'v<version>:<base64>' format") from None
        key = self.keys.get(version)
        if key is None:
            raise KeyRingError(f"key version {version} is not in the key ring")
        raw = base64.b64decode(body)
        try:
            plain = AESGCM(key).decrypt(raw[:12], raw[12:], aad.encode())
        except InvalidTag:
            raise KeyRingError("ciphertext failed authentication (wrong key or tampered data)") from None
        return json.loads(plain)


def parse_ring(spec: str) -> dict[int, bytes]:
    keys: dict[int, bytes] = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        version_text, _, material = part.partition(":")
        try:
            version = int(version_text)
            key = base64.b64decode(material, validate=True)
        except ValueError:
            raise KeyRingError(f"bad key-ring entry {version_text!r}: expected '<version>:<base64 key>'") from None
        if len(key) != 32:
            raise KeyRingError(f"key version {version} must be 32 bytes (AES-256), got {len(key)}")
        keys[version] = key
    if not keys:
        raise KeyRingError("the key ring is empty")
    return keys


def format_ring(keys: dict[int, bytes]) -> str:
    return ",".join(f"{v}:{base64.b64encode(k).decode()}" for v, k in sorted(keys.items()))


_lock = threading.Lock()
_cached: tuple[str, KeyRing] | None = None


def _ring_spec() -> str:
    if settings.ATTUNE_ENCRYPTION_KEYS:
        return settings.ATTUNE_ENCRYPTION_KEYS
    path = Path(settings.ATTUNE_ENCRYPTION_KEY_FILE)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(format_ring({1: secrets.token_bytes(32)}))
    return path.read_text().strip()


def get_ring() -> KeyRing:
    global _cached
    with _lock:
        spec = _ring_spec()
        if _cached is None or _cached[0] != spec:
            _cached = (spec, KeyRing(parse_ring(spec)))
        return _cached[1]


def add_key_version() -> int:
    """Append a new key version to the embedded key file (ATTUNE_ENCRYPTION_KEYS is managed by the operator)."""
    if settings.ATTUNE_ENCRYPTION_KEYS:
        raise KeyRingError(
            "the key ring comes from ATTUNE_ENCRYPTION_KEYS: add the new version there, restart, then run `attune keys reencrypt`"
        )
    ring = get_ring()
    keys = dict(ring.keys)
    version = ring.current_version + 1
    keys[version] = secrets.token_bytes(32)
    path = Path(settings.ATTUNE_ENCRYPTION_KEY_FILE)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(format_ring(keys))
    tmp.replace(path)
    return version
