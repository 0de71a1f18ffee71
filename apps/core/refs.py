"""Refs (SPEC §1): lowercase pack refs and ``<pack>.<name>`` component refs."""
from __future__ import annotations

import re

from django.core.exceptions import ValidationError

PACK_REF_RE = re.compile(r"^[a-z][a-z0-9_-]*$")
NAME_RE = re.compile(r"^[a-z][a-z0-9_-]*$")
COMPONENT_REF_RE = re.compile(r"^[a-z][a-z0-9_-]*\.[a-z][a-z0-9_-]*$")


RESERVED_PACK_REFS = frozenset({"register", "install"})  # /api/v1/packs/register and /install


def validate_pack_ref(value: str) -> None:
    if not isinstance(value, str) or not PACK_REF_RE.match(value):
        raise ValidationError(
            "%(value)r is not a valid pack ref: use lowercase letters, digits, '_' or '-', starting with a letter.",
            params={"value": value},
            code="invalid_ref",
        )
    if value in RESERVED_PACK_REFS:
        raise ValidationError("%(value)r is reserved (an API endpoint has that name).", params={"value": value},
                              code="reserved_ref")


def validate_name(value: str) -> None:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ValidationError(
            "%(value)r is not a valid name: use lowercase letters, digits, '_' or '-', starting with a letter.",
            params={"value": value},
            code="invalid_name",
        )


def validate_component_ref(value: str) -> None:
    if not isinstance(value, str) or not COMPONENT_REF_RE.match(value):
        raise ValidationError(
            "%(value)r is not a valid ref: expected '<pack>.<name>' in lowercase.",
            params={"value": value},
            code="invalid_ref",
        )


def make_ref(pack: str, name: str) -> str:
    return f"{pack}.{name}"


def split_ref(ref: str) -> tuple[str, str]:
    validate_component_ref(ref)
    pack, name = ref.split(".", 1)
    return pack, name
