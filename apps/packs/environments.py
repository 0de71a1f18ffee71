"""Interpreter environments for a pack's action and sensor processes (SPEC §3).

* Python: a pack without ``requirements.txt`` runs with one shared, clean virtualenv
  (``ATTUNE_HOME/venvs/_base``, no pip, empty site-packages: nothing from Attune's own environment leaks in
  and every interpreter start stays cheap). A pack with ``requirements.txt`` gets its own virtualenv
  ``ATTUNE_HOME/venvs/<pack>-<hash>``, where the hash covers the file's content and the Python version; it is
  built once, reused while the file is unchanged, and replaced (the old one removed) when the file changes.
* Node: a pack with ``package.json`` gets ``ATTUNE_HOME/node/<pack>-<hash>/node_modules`` (installed with
  ``npm install --omit=dev``), handed to the process as ``NODE_PATH``.

Builds are safe across threads and processes: one ``fcntl.flock`` lock file per target directory
(``<kind dir>/.locks/<name>.lock``), and a ``.complete`` marker written last, so a directory without it is a
broken leftover that is removed and rebuilt. A failed build removes what it made and raises
``EnvironmentBuildError``; the next call tries again.

The hot path (hundreds of executions per second) costs one ``stat`` of the pack's requirements file and a dict
lookup: results are cached in-process by the file's (mtime, size, inode, ctime).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from django.conf import settings

from apps.core.refs import PACK_REF_RE

__all__ = [
    "EnvironmentBuildError",
    "clear_cache",
    "node_environment",
    "node_executable",
    "python_interpreter",
]

BASE_VENV_NAME = "_base"
MARKER = ".complete"
LOCKS_DIR = ".locks"
LOG_TAIL_BYTES = 20_000
VENV_TIMEOUT = 300
PIP_TIMEOUT = 600
NPM_TIMEOUT = 600

# pip settings that say how this machine reaches a package index (and so must reach the pack's pip too).
# Everything else PIP_* (PIP_USER, PIP_TARGET, PIP_REQUIRE_VIRTUALENV, PIP_CONSTRAINT, ...) describes our own
# environment and is dropped. pip's config files (/etc/pip.conf, ~/.config/pip/pip.conf) keep working: HOME is kept.
PIP_PASSTHROUGH = frozenset({
    "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_TRUSTED_HOST",
    "PIP_CERT", "PIP_CLIENT_CERT", "PIP_PROXY", "PIP_DEFAULT_TIMEOUT", "PIP_TIMEOUT", "PIP_RETRIES",
})
# Variables that would point a child interpreter at our own packages.
DROPPED_ENV = frozenset({"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "VIRTUAL_ENV",
                         "CONDA_PREFIX", "__PYVENV_LAUNCHER__"})

_HASH_RE = r"-[0-9a-f]{16}"


class EnvironmentBuildError(Exception):
    """A pack's interpreter environment could not be built.

    ``message``: one line for people; ``log``: the tail of pip/npm output (at most 20 KB)."""

    def __init__(self, message: str, log: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.log = _tail(log)

    def __str__(self) -> str:
        return self.message


# --------------------------------------------------------------------------------------------- caches

# key -> (signature of the source files, result). Reads are lock-free dict lookups; writes replace whole values.
_cache: dict[tuple, tuple[tuple, object]] = {}
_base_cache: dict[str, str] = {}
_node_version_cache: dict[str, str] = {}
_which_cache: dict[tuple[str, str | None], str] = {}


def clear_cache() -> None:
    """Forget every cached result (e.g. after environments were deleted by hand)."""
    _cache.clear()
    _base_cache.clear()
    _node_version_cache.clear()
    _which_cache.clear()


def _signature(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)


_home_memo: tuple[object, Path] = (None, Path())  # (settings.ATTUNE_HOME object, its absolute Path), swapped whole


def _home() -> Path:
    global _home_memo
    raw = settings.ATTUNE_HOME
    memo = _home_memo
    if memo[0] is not raw:
        memo = _home_memo = (raw, Path(raw).absolute())
    return memo[1]


def _check_ref(pack_ref: str) -> None:
    if not isinstance(pack_ref, str) or not PACK_REF_RE.match(pack_ref):
        raise ValueError(f"{pack_ref!r} is not a valid pack ref")


# --------------------------------------------------------------------------------------------- python

def python_interpreter(pack_ref: str, pack_path: Path) -> str:
    """Absolute path of the python executable for this pack's actions and sensors (building its virtualenv
    the first time, or when its requirements.txt changed). Raises EnvironmentBuildError when a build fails."""
    home = _home()
    req = os.path.join(pack_path, "requirements.txt")
    try:
        st = os.stat(req)
    except FileNotFoundError:
        return _base_interpreter(home)
    key = ("python", str(home), pack_ref, req)
    sig = _signature(st)
    hit = _cache.get(key)
    if hit is not None and hit[0] == sig:
        return hit[1]  # type: ignore[return-value]

    _check_ref(pack_ref)
    try:
        content = Path(req).read_bytes()
    except OSError as exc:
        raise EnvironmentBuildError(f"cannot read requirements.txt of pack {pack_ref}: {exc.strerror or exc}")
    digest = hashlib.sha256(content + b"\0python " + sys.version.encode()).hexdigest()[:16]
    venvs = home / "venvs"
    name = f"{pack_ref}-{digest}"

    def build(target: Path) -> None:
        _build_requirements_venv(target, pack_ref, Path(pack_path), Path(req), content)

    target = _ensure(venvs, name, build)
    _remove_other_versions(venvs, pack_ref, keep=name)
    interpreter = str(target / "bin" / "python")
    _cache[key] = (sig, interpreter)
    return interpreter


def _base_python() -> str:
    """The real interpreter behind ours (not our virtualenv's python, whose site-packages is Attune's)."""
    return getattr(sys, "_base_executable", None) or sys.executable


def _base_interpreter(home: Path) -> str:
    cached = _base_cache.get(str(home))
    if cached is not None:
        return cached
    venvs = home / "venvs"
    stamp = f"{sys.version}\n{_base_python()}\n"

    def build(target: Path) -> None:
        _run([_base_python(), "-m", "venv", "--without-pip", str(target)], cwd=venvs,
             what="creating the base Python virtualenv", timeout=VENV_TIMEOUT)

    target = _ensure(venvs, BASE_VENV_NAME, build, stamp=stamp)
    interpreter = str(target / "bin" / "python")
    _base_cache[str(home)] = interpreter
    return interpreter


def _build_requirements_venv(target: Path, pack_ref: str, pack_path: Path, req: Path, content: bytes) -> None:
    _run([_base_python(), "-m", "venv", str(target)], cwd=target.parent,
         what=f"creating the virtualenv for pack {pack_ref}", timeout=VENV_TIMEOUT)
    (target / "attune-requirements.txt").write_bytes(content)  # what this venv was built from, for people
    python = str(target / "bin" / "python")
    # cwd = the pack, so relative paths in requirements.txt (./lib, -e .) mean what the pack author meant.
    _run([python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-r", str(req)],
         cwd=pack_path, what=f"pip install for pack {pack_ref}", timeout=PIP_TIMEOUT)


# --------------------------------------------------------------------------------------------- node

def node_executable() -> str:
    """Absolute path of ``node`` on this worker."""
    path = os.environ.get("PATH")
    cached = _which_cache.get(("node", path))
    if cached is not None:
        return cached
    found = shutil.which("node")
    if not found:
        raise EnvironmentBuildError("node is not installed on this worker")
    _which_cache[("node", path)] = found
    return found


def node_environment(pack_ref: str, pack_path: Path) -> dict[str, str]:
    """Environment additions for this pack's node actions: ``{"NODE_PATH": ...}`` when the pack has a
    package.json (installing its node_modules the first time, or when package.json/package-lock.json changed),
    else ``{}``. Raises EnvironmentBuildError when npm is missing or the install fails."""
    package_json = os.path.join(pack_path, "package.json")
    lock_json = os.path.join(pack_path, "package-lock.json")
    try:
        st = os.stat(package_json)
    except FileNotFoundError:
        return {}
    try:
        lock_sig: tuple = _signature(os.stat(lock_json))
    except FileNotFoundError:
        lock_sig = ()
    home = _home()
    key = ("node", str(home), pack_ref, package_json)
    sig = (_signature(st), lock_sig)
    hit = _cache.get(key)
    if hit is not None and hit[0] == sig:
        return dict(hit[1])  # type: ignore[call-overload]

    _check_ref(pack_ref)
    try:
        pj = Path(package_json).read_bytes()
        lock = Path(lock_json).read_bytes() if lock_sig else None
    except OSError as exc:
        raise EnvironmentBuildError(f"cannot read package.json of pack {pack_ref}: {exc.strerror or exc}")
    h = hashlib.sha256(b"package.json\0" + pj)
    if lock is not None:
        h.update(b"\0package-lock.json\0" + lock)
    h.update(b"\0node " + _node_version().encode())  # native addons are built for one node ABI
    name = f"{pack_ref}-{h.hexdigest()[:16]}"
    node_dir = home / "node"

    def build(target: Path) -> None:
        npm = shutil.which("npm")
        if not npm:
            raise EnvironmentBuildError(
                f"npm is not installed on this worker (pack {pack_ref} has a package.json); install Node.js and npm")
        target.mkdir(parents=True)
        (target / "package.json").write_bytes(pj)
        if lock is not None:
            (target / "package-lock.json").write_bytes(lock)
        _run([npm, "install", "--no-audit", "--no-fund", "--omit=dev"], cwd=target,
             what=f"npm install for pack {pack_ref}", timeout=NPM_TIMEOUT)

    target = _ensure(node_dir, name, build)
    _remove_other_versions(node_dir, pack_ref, keep=name)
    result = {"NODE_PATH": str(target / "node_modules")}
    _cache[key] = (sig, result)
    return dict(result)


def _node_version() -> str:
    node = shutil.which("node")
    if not node:
        return "none"
    cached = _node_version_cache.get(node)
    if cached is None:
        try:
            cached = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30,
                                    stdin=subprocess.DEVNULL).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            cached = "unknown"
        _node_version_cache[node] = cached
    return cached


# --------------------------------------------------------------------------------------------- building

def _ensure(kind_dir: Path, name: str, build: Callable[[Path], None], stamp: str = "") -> Path:
    """Return ``kind_dir/name`` once it is complete, building it under its lock when it is not."""
    target = kind_dir / name
    marker = target / MARKER
    if _complete(marker, stamp):
        return target
    lock_path = kind_dir / LOCKS_DIR / f"{name}.lock"
    with _locked(lock_path) as acquired:
        assert acquired
        if _complete(marker, stamp):  # another thread or process built it while we waited
            return target
        _remove(target)  # a leftover without its marker: broken (killed mid-build), or for another Python
        if target.exists():
            raise EnvironmentBuildError(f"cannot remove the broken environment {target}")
        try:
            build(target)
            tmp = marker.with_name(MARKER + ".tmp")
            tmp.write_text(stamp)
            os.replace(tmp, marker)
        except BaseException:
            _remove(target)
            raise
    return target


def _complete(marker: Path, stamp: str) -> bool:
    try:
        return marker.read_text() == stamp
    except OSError:
        return False


def _remove_other_versions(kind_dir: Path, pack_ref: str, keep: str) -> None:
    """Remove this pack's environments other than ``keep`` (older versions), skipping any being built now."""
    pattern = re.compile(re.escape(pack_ref) + _HASH_RE)
    try:
        names = os.listdir(kind_dir)
    except FileNotFoundError:
        return
    for other in names:
        if other == keep or not pattern.fullmatch(other):
            continue
        with _locked(kind_dir / LOCKS_DIR / f"{other}.lock", blocking=False) as acquired:
            if acquired:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(kind_dir / other / MARKER)  # first, so a half-removed dir counts as broken
                _remove(kind_dir / other)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _locked(lock_path: Path, blocking: bool = True):
    """Hold an exclusive flock on ``lock_path`` (yields False if ``blocking`` is off and it is taken).

    flock locks belong to the open file description, so two threads of one process exclude each other as
    two processes do. The lock file is unlinked on release; a waiter that then wakes up holding the lock of an
    unlinked file notices (inode check) and takes the lock again on the current file."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            yield False
            return
        except BaseException:
            os.close(fd)
            raise
        try:
            current = os.stat(lock_path)
        except FileNotFoundError:
            current = None
        held = os.fstat(fd)
        if current is not None and (current.st_ino, current.st_dev) == (held.st_ino, held.st_dev):
            break
        os.close(fd)  # the file we locked was removed by its previous holder: lock the current one
    try:
        yield True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_path)
        os.close(fd)


# --------------------------------------------------------------------------------------------- subprocesses

def _child_env() -> dict[str, str]:
    env = {}
    for name, value in os.environ.items():
        if name in DROPPED_ENV or (name.startswith("PIP_") and name not in PIP_PASSTHROUGH):
            continue
        env[name] = value
    if sys.prefix != sys.base_prefix:  # drop our own virtualenv's bin/ from PATH
        own_bin = os.path.join(sys.prefix, "bin")
        env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p and p != own_bin)
    return env


def _run(cmd: list[str], *, cwd: Path, what: str, timeout: float) -> None:
    """Run ``cmd`` in its own process group; raise EnvironmentBuildError with the output's tail on failure."""
    try:
        proc = subprocess.Popen(cmd, cwd=cwd, env=_child_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as exc:
        raise EnvironmentBuildError(f"{what} could not start: {exc.strerror or exc}")
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise EnvironmentBuildError(f"{what} timed out after {timeout:g} s", log=_drain(proc))
    except BaseException:
        _kill_group(proc)
        _drain(proc)
        raise
    if proc.returncode != 0:
        raise EnvironmentBuildError(f"{what} failed (exit {proc.returncode})", log=_decode(out))


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _drain(proc: subprocess.Popen) -> str:
    try:
        out, _ = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:  # a grandchild in another session still holds the pipe
        proc.kill()
        return ""
    return _decode(out)


def _decode(out: bytes | None) -> str:
    return (out or b"")[-LOG_TAIL_BYTES:].decode("utf-8", errors="replace")


def _tail(log: str) -> str:
    data = (log or "").encode("utf-8", errors="replace")
    if len(data) <= LOG_TAIL_BYTES:
        return log or ""
    return data[-LOG_TAIL_BYTES:].decode("utf-8", errors="ignore")

