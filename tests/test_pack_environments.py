"""Pack interpreter environments (SPEC §3): the clean base virtualenv, per-pack virtualenvs built from
requirements.txt, per-pack node_modules from package.json. Real venv/pip/npm subprocesses throughout.

The package installed is ``tomli-w`` (one pure-Python module of a few KB, absent from Attune's own venv and the
system Python); the one successful install is shared by the module-scoped fixture.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.test import override_settings

from apps.packs import environments
from apps.packs.environments import EnvironmentBuildError, node_environment, node_executable, python_interpreter

PACKAGE = "tomli-w==1.2.0"
SITE = f"lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages"


def run(cmd: list[str], **env: str) -> subprocess.CompletedProcess:
    """Run as a runner would: none of our own interpreter's search path in the environment."""
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env={**base, **env})


def make_pack(root: Path, name: str, files: dict[str, str] | None = None) -> Path:
    pack = root / name
    pack.mkdir(parents=True)
    for filename, text in (files or {}).items():
        (pack / filename).write_text(text)
    return pack


def count_builds(mp: pytest.MonkeyPatch) -> list[Path]:
    """Record every requirements-venv build (the target dir), still building for real."""
    builds: list[Path] = []
    real = environments._build_requirements_venv

    def counting(target, *args, **kwargs):
        builds.append(target)
        return real(target, *args, **kwargs)

    mp.setattr(environments, "_build_requirements_venv", counting)
    return builds


# A second worker process asking for the same venv: reports what it got and how many builds it ran itself.
OTHER_PROCESS = """
import json, sys
from pathlib import Path
from apps.packs import environments
builds = []
real = environments._build_requirements_venv
environments._build_requirements_venv = lambda target, *a, **k: (builds.append(1), real(target, *a, **k))[1]
print("ready", flush=True)
sys.stdin.readline()
print(json.dumps([environments.python_interpreter("withreqs", Path(sys.argv[1])), len(builds)]), flush=True)
"""


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One real pip install, asked for at the same moment by two threads here and by another process,
    with hostile PIP_* / PYTHONPATH in our environment (they must not reach pip)."""
    home = tmp_path_factory.mktemp("attune_home").resolve()
    pack = make_pack(tmp_path_factory.mktemp("packs"), "withreqs", {"requirements.txt": PACKAGE + "\n"})
    results: list[str | None] = [None, None]
    errors: list[BaseException] = []
    barrier = threading.Barrier(3)

    with pytest.MonkeyPatch.context() as mp, override_settings(ATTUNE_HOME=home):
        builds = count_builds(mp)
        mp.setenv("PIP_USER", "1")  # pip refuses to install into a venv with this: it must not leak through
        mp.setenv("PYTHONPATH", str(Path(environments.__file__).resolve().parents[2]))
        other = subprocess.Popen(
            [sys.executable, "-c", OTHER_PROCESS, str(pack)], cwd=Path(environments.__file__).resolve().parents[2],
            env={**os.environ, "DJANGO_SETTINGS_MODULE": "attune.settings", "ATTUNE_HOME": str(home),
                 "ATTUNE_SECRET_KEY": "test-only"},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert other.stdout.readline().strip() == "ready", other.stderr.read()

            def ask(i: int) -> None:
                barrier.wait()
                try:
                    results[i] = python_interpreter("withreqs", pack)
                except BaseException as exc:  # reported by the test, not lost in a thread
                    errors.append(exc)

            threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            barrier.wait()
            other.stdin.write("go\n")
            other.stdin.flush()
            for t in threads:
                t.join(timeout=300)
            out, err = other.communicate(timeout=300)
        finally:
            other.kill()
    assert other.returncode == 0, err
    other_interpreter, other_builds = json.loads(out)
    return SimpleNamespace(home=home, pack=pack, results=results, errors=errors, builds=builds,
                           other_interpreter=other_interpreter, other_builds=other_builds)


def test_base_interpreter_is_a_clean_virtualenv(settings, tmp_path):
    settings.ATTUNE_HOME = tmp_path
    pack = make_pack(tmp_path / "packs", "plain")

    interpreter = python_interpreter("plain", pack)

    base = tmp_path / "venvs" / "_base"
    assert interpreter == str(base / "bin" / "python")
    assert os.path.isabs(interpreter) and os.access(interpreter, os.X_OK)
    ran = run([interpreter, "-c", "import json, sys; print(json.dumps(sys.prefix))"])
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == f'"{base}"'
    # Nothing of Attune's own venv (or the system site-packages) leaks in: no django, no pip, no .pth files.
    ran = run([interpreter, "-c", "import django"])
    assert ran.returncode != 0 and "No module named 'django'" in ran.stderr
    assert os.listdir(base / SITE) == []

    # Another pack without requirements shares it; a fresh process (empty cache) reuses it without rebuilding.
    marker = os.stat(base / ".complete")
    environments.clear_cache()
    assert python_interpreter("other", make_pack(tmp_path / "packs", "other")) == interpreter
    assert os.stat(base / ".complete").st_mtime_ns == marker.st_mtime_ns


def test_requirements_venv_can_import_the_package(shared):
    assert not shared.errors, shared.errors
    interpreter = shared.results[0]
    assert re.fullmatch(re.escape(str(shared.home / "venvs")) + r"/withreqs-[0-9a-f]{16}/bin/python", interpreter)
    ran = run([interpreter, "-c", "import tomli_w; print(tomli_w.dumps({'answer': 42}))"])
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "answer = 42"
    ran = run([interpreter, "-c", "import django"])
    assert ran.returncode != 0 and "No module named 'django'" in ran.stderr


def test_two_threads_and_another_process_asking_at_once_build_once(shared):
    assert not shared.errors, shared.errors
    assert shared.results[0] == shared.results[1] == shared.other_interpreter
    assert len(shared.builds) + shared.other_builds == 1
    assert not list((shared.home / "venvs" / ".locks").iterdir())  # lock files are cleaned up


def test_unchanged_requirements_reuse_the_venv(shared, settings, monkeypatch):
    settings.ATTUNE_HOME = shared.home
    builds = count_builds(monkeypatch)
    venv = Path(shared.results[0]).parent.parent
    before = os.stat(venv / ".complete")

    assert python_interpreter("withreqs", shared.pack) == shared.results[0]  # in-process cache
    environments.clear_cache()  # as a new worker process would: found on disk, complete
    assert python_interpreter("withreqs", shared.pack) == shared.results[0]

    assert builds == []
    after = os.stat(venv / ".complete")
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_changed_requirements_build_a_new_venv_and_remove_the_old(settings, tmp_path, monkeypatch):
    settings.ATTUNE_HOME = tmp_path
    builds = count_builds(monkeypatch)
    pack = make_pack(tmp_path / "packs", "changing", {"requirements.txt": "# nothing yet\n"})
    old = python_interpreter("changing", pack)
    old_venv = Path(old).parent.parent
    assert old_venv.is_dir()

    (pack / "requirements.txt").write_text(PACKAGE + "\n")
    new = python_interpreter("changing", pack)

    assert new != old and len(builds) == 2
    assert not old_venv.exists()
    assert [p.name for p in (tmp_path / "venvs").iterdir() if p.name.startswith("changing")] == [Path(new).parent.parent.name]
    ran = run([new, "-c", "import tomli_w"])
    assert ran.returncode == 0, ran.stderr


def test_failed_pip_install_raises_leaves_nothing_and_retries(settings, tmp_path, monkeypatch):
    settings.ATTUNE_HOME = tmp_path
    builds = count_builds(monkeypatch)
    pack = make_pack(tmp_path / "packs", "broken", {"requirements.txt": "attune-no-such-package-xyz==1.0\n"})

    for attempt in (1, 2):
        with pytest.raises(EnvironmentBuildError) as caught:
            python_interpreter("broken", pack)
        error = caught.value
        assert re.fullmatch(r"pip install for pack broken failed \(exit \d+\)", str(error)), str(error)
        assert "attune-no-such-package-xyz" in error.log
        assert len(error.log.encode()) <= 20_000
        assert len(builds) == attempt  # the failure was not cached: the second call tried again
        leftovers = [p.name for p in (tmp_path / "venvs").iterdir() if p.name.startswith("broken")]
        assert leftovers == []
        assert not list((tmp_path / "venvs" / ".locks").iterdir())


def test_node_modules_for_a_pack_with_package_json(settings, tmp_path):
    missing = [tool for tool in ("node", "npm") if not shutil.which(tool)]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed on this machine: cannot install node_modules")
    settings.ATTUNE_HOME = tmp_path
    pack = make_pack(tmp_path / "packs", "nodepack",
                     {"package.json": '{"name": "nodepack", "version": "1.0.0", "private": true,'
                                      ' "dependencies": {"is-number": "7.0.0"}}\n'})

    env = node_environment("nodepack", pack)

    node_path = env["NODE_PATH"]
    assert list(env) == ["NODE_PATH"]
    assert re.fullmatch(re.escape(str(tmp_path / "node")) + r"/nodepack-[0-9a-f]{16}/node_modules", node_path)
    ran = run([node_executable(), "-e", "process.stdout.write(String(require('is-number')(7)))"], NODE_PATH=node_path)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "true"
    assert not (pack / "node_modules").exists()  # installed under ATTUNE_HOME, not into the pack

    marker = os.stat(Path(node_path).parent / ".complete")
    environments.clear_cache()
    assert node_environment("nodepack", pack) == env
    assert os.stat(Path(node_path).parent / ".complete").st_mtime_ns == marker.st_mtime_ns


def test_node_without_package_json_or_without_npm(settings, tmp_path, monkeypatch):
    settings.ATTUNE_HOME = tmp_path
    assert node_environment("plain", make_pack(tmp_path / "packs", "plain")) == {}

    # A worker whose PATH has node (if this machine has it) but no npm.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if shutil.which("node"):
        (bin_dir / "node").symlink_to(shutil.which("node"))
    monkeypatch.setenv("PATH", str(bin_dir))
    pack = make_pack(tmp_path / "packs", "needsnpm", {"package.json": '{"name": "needsnpm", "version": "1.0.0"}\n'})
    with pytest.raises(EnvironmentBuildError, match=r"^npm is not installed on this worker"):
        node_environment("needsnpm", pack)
    assert [p.name for p in (tmp_path / "node").iterdir()] == [".locks"]

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(EnvironmentBuildError, match=r"^node is not installed on this worker$"):
        node_executable()


def test_a_half_built_environment_is_rebuilt_not_used(settings, tmp_path):
    """A build killed midway leaves a directory without its .complete marker: it is removed and built again."""
    settings.ATTUNE_HOME = tmp_path
    half = tmp_path / "venvs" / "_base"
    (half / "bin").mkdir(parents=True)
    (half / "bin" / "python").write_text("#!/bin/sh\nexit 3\n")
    (half / "bin" / "python").chmod(0o755)

    interpreter = python_interpreter("plain", make_pack(tmp_path / "packs", "plain"))

    assert (half / ".complete").exists()
    ran = run([interpreter, "-c", "import sys; print(sys.prefix)"])
    assert ran.returncode == 0 and ran.stdout.strip() == str(half)
