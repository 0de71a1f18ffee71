"""A python pack with requirements.txt runs in its own virtualenv (SPEC §3), built once and reused."""
from __future__ import annotations

import subprocess
import sys

import pytest

from apps.executions import services
from apps.packs.registrar import register_pack
from apps.packs.runtimes import sync_builtin_runtimes
from tests.factories import UserFactory

from .conftest import wait_for, write

pytestmark = pytest.mark.timeout(300)


@pytest.mark.django_db(transaction=True)
def test_requirements_are_installed_in_the_packs_own_venv(tmp_path, settings, worker):
    # tomli_w is neither in Attune's virtualenv nor in the system Python: only the pack's venv has it.
    assert subprocess.run([sys.executable, "-c", "import tomli_w"], capture_output=True).returncode != 0
    settings.ATTUNE_HOME = tmp_path / "home"
    sync_builtin_runtimes()
    root = tmp_path / "tomlpack"
    write(root, "pack.yaml", "ref: tomlpack\nversion: 1.0.0\n")
    write(root, "requirements.txt", "tomli-w==1.2.0\n")
    write(root, "actions/dump.yaml", """
        name: dump
        runner_type: python
        entry_point: dump.py
        parameters:
          table: {type: object, required: true}
    """)
    write(root, "actions/dump.py", """
        import json, sys
        import tomli_w
        print(tomli_w.dumps(json.load(sys.stdin)["table"]), end="")
        print(sys.prefix, file=sys.stderr)
    """)
    register_pack(root)
    from apps.actions.models import Action

    action = Action.objects.get(ref="tomlpack.dump")
    first = wait_for(services.create_execution(action, {"table": {"name": "attune"}}, user=UserFactory()).pk,
                     "succeeded", timeout=240)
    assert first.result["stdout"] == 'name = "attune"\n'
    venv = first.result["stderr"].strip()
    assert venv.startswith(str(settings.ATTUNE_HOME / "venvs" / "tomlpack-"))
    second = wait_for(services.create_execution(action, {"table": {"n": 1}}).pk, "succeeded", timeout=60)
    assert second.result["stderr"].strip() == venv  # reused, not rebuilt

    write(root, "requirements.txt", "attune-no-such-package-xyz==1.0\n")  # a change is noticed: rebuild
    broken = wait_for(services.create_execution(action, {"table": {}}).pk, "failed", timeout=240)
    assert "pip install for pack tomlpack failed" in broken.result["error"]
    assert "attune-no-such-package-xyz" in broken.result["log"]


@pytest.mark.django_db(transaction=True)
def test_node_pack_gets_its_node_modules(tmp_path, settings, worker):
    import shutil

    if not (shutil.which("node") and shutil.which("npm")):
        pytest.skip("node and npm are not installed on this machine")
    settings.ATTUNE_HOME = tmp_path / "home"
    sync_builtin_runtimes()
    root = tmp_path / "nodepack"
    write(root, "pack.yaml", "ref: nodepack\nversion: 1.0.0\n")
    write(root, "package.json", '{"name": "nodepack", "version": "1.0.0", "dependencies": {"is-number": "7.0.0"}}\n')
    write(root, "actions/check.yaml", """
        name: check
        runner_type: node
        entry_point: check.js
        output_format: json
        parameters:
          value: {type: string, required: true}
    """)
    write(root, "actions/check.js", """
        const isNumber = require('is-number');
        let input = '';
        process.stdin.on('data', (d) => { input += d; });
        process.stdin.on('end', () => {
          const params = JSON.parse(input);
          console.log(JSON.stringify({value: params.value, number: isNumber(params.value)}));
        });
    """)
    register_pack(root)
    from apps.actions.models import Action

    action = Action.objects.get(ref="nodepack.check")
    done = wait_for(services.create_execution(action, {"value": "42"}).pk, "succeeded", timeout=240)
    assert done.result["data"] == {"value": "42", "number": True}
