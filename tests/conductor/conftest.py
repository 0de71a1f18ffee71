import pytest

from apps.packs.registrar import register_pack
from apps.packs.runtimes import sync_builtin_runtimes
from tests.executions.conftest import ROOT


@pytest.fixture
def core(transactional_db, worker):
    """The runtimes and the core pack (a transactional test's flush removed them), and a real worker."""
    sync_builtin_runtimes()
    register_pack(ROOT / "packs" / "core")
