"""Fixtures for the REST API tests (the fast hasher and cache reset live in tests/conftest.py)."""
from __future__ import annotations

import pytest

from tests.factories import PackFactory


@pytest.fixture
def core_pack(db):
    return PackFactory(ref="core", label="Core")
