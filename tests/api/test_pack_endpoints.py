"""Pack endpoints (SPEC §3, §11): register a server directory, install an uploaded .tar.gz, pack config with
encrypted secrets, and the per-pack component lists."""
from __future__ import annotations

import gzip
import io
import json
import tarfile
import textwrap
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from apps.accounts.models import PermissionAssignment, PermissionSet
from apps.actions.models import Action
from apps.packs import services
from apps.packs.models import Pack
from apps.packs.registrar import register_pack
from apps.rules.models import Rule
from tests.factories import (
    ActionFactory,
    PackFactory,
    PolicyFactory,
    RuleFactory,
    SensorFactory,
    TriggerFactory,
    UserFactory,
    WorkflowDefinitionFactory,
)

from .resources import API

pytestmark = pytest.mark.django_db

SECRET = "s3cr3t-api-key-value"

OPS_FILES = {
    "pack.yaml": """
        ref: ops
        version: 1.0.0
        description: Ops tools
        config_schema:
          type: object
          properties:
            api_url: {type: string, default: "https://api.example.com"}
            api_key: {type: string, secret: true, minLength: 8}
            port: {type: integer, default: 443, minimum: 1}
            hosts: {type: array, items: {type: string}}
          required: [api_key]
    """,
    "actions/restart.yaml": """
        name: restart
        runner_type: shell
        entry_point: restart.sh
        parameters:
          unit: {type: string, required: true}
    """,
    "actions/restart.sh": "#!/bin/sh\necho restarted\n",
    "actions/deploy.yaml": "name: deploy\nrunner_type: workflow\nentry_point: workflows/deploy.yaml\n",
    "actions/workflows/deploy.yaml": "version: 1.0\ntasks:\n  - name: a\n    action: ops.restart\n    input: {unit: web}\n",
    "triggers/alert.yaml": "name: alert\npayload_schema: {type: object}\n",
    "sensors/watcher.yaml": "name: watcher\nrunner_type: python\nentry_point: watcher.py\ntrigger_types: [ops.alert]\n",
    "sensors/watcher.py": "print('watching')\n",
    "rules/on_alert.yaml": """
        name: on_alert
        trigger: ops.alert
        action: ops.restart
        action_params: {unit: "{{ payload.unit }}"}
    """,
    "policies/one_at_a_time.yaml": "name: one_at_a_time\naction: ops.restart\ntype: concurrency\nthreshold: 1\n",
}


def write_pack(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def targz(files: dict[str, str | bytes], prefix: str = "ops/", extra=(), compress: bool = True) -> bytes:
    """An in-memory archive of ``files`` under ``prefix``; ``extra`` adds raw TarInfo members (links, devices)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if compress else "w") as tar:
        for rel, text in files.items():
            data = text if isinstance(text, bytes) else textwrap.dedent(text).encode()
            info = tarfile.TarInfo(prefix + rel)
            info.size = len(data)
            info.mode = 0o755 if rel.endswith((".sh", ".py")) else 0o644
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isreg() else None)
    return buffer.getvalue()


def member(name: str, type_=tarfile.REGTYPE, linkname: str = "", size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = type_
    info.linkname = linkname
    info.size = size
    return info


def install(client, data: bytes, name: str = "ops.tar.gz"):
    upload = SimpleUploadedFile(name, data, content_type="application/gzip")
    return client.post(f"{API}/packs/install", {"file": upload}, format="multipart")


def client_with(grants, packs=None, superuser=False) -> APIClient:
    user = UserFactory(is_superuser=superuser)
    pset = PermissionSet.objects.create(name=f"custom-{user.username}", grants=grants)
    PermissionAssignment.objects.create(identity=user, permission_set=pset, packs=packs)
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def home(settings, tmp_path):
    settings.ATTUNE_HOME = tmp_path / "home"
    settings.ATTUNE_HOME.mkdir()
    return settings.ATTUNE_HOME


@pytest.fixture
def ops_dir(tmp_path):
    return write_pack(tmp_path / "src" / "ops", OPS_FILES)


def leftovers(home: Path) -> list[str]:
    """Anything in the install directory besides installed packs and the lock file."""
    packs = home / "packs"
    return sorted(p.name for p in packs.iterdir() if p.name.startswith(".") and p.name != ".install.lock")


# --- POST /packs/register -----------------------------------------------------------------------------


def test_register_creates_then_reregisters(admin_api, ops_dir):
    response = admin_api.post(f"{API}/packs/register", {"path": str(ops_dir)})
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["pack"]["ref"] == "ops" and body["pack"]["source"] == "pack"
    assert body["created"] == {"actions": 2, "triggers": 1, "sensors": 1, "rules": 1, "policies": 1}
    assert body["updated"] == {} and body["removed"] == {}

    (ops_dir / "policies" / "one_at_a_time.yaml").unlink()
    again = admin_api.post(f"{API}/packs/register/", {"path": str(ops_dir)})
    assert again.status_code == 200, again.content
    assert again.json()["updated"]["actions"] == 2
    assert again.json()["removed"] == {"policies": 1}


def test_reregister_after_removing_an_action_its_rule_and_a_workflow(admin_api, ops_dir):
    """Rows whose files are gone are pruned dependents first (a rule before the action it fires)."""
    assert admin_api.post(f"{API}/packs/register", {"path": str(ops_dir)}).status_code == 201
    for rel in ("rules/on_alert.yaml", "policies/one_at_a_time.yaml", "actions/restart.yaml",
                "actions/deploy.yaml", "actions/workflows/deploy.yaml"):
        (ops_dir / rel).unlink()
    response = admin_api.post(f"{API}/packs/register", {"path": str(ops_dir)})
    assert response.status_code == 200, response.content
    assert response.json()["removed"] == {"rules": 1, "policies": 1, "actions": 2}
    assert not Action.objects.filter(pack__ref="ops").exists()


def test_reregister_cannot_prune_an_action_an_api_rule_uses(admin_api, ops_dir):
    assert admin_api.post(f"{API}/packs/register", {"path": str(ops_dir)}).status_code == 201
    Rule.objects.create(pack=Pack.objects.get(ref="ops"), name="manual", trigger=Rule.objects.get().trigger,
                        action=Action.objects.get(ref="ops.restart"), source="api")
    for rel in ("rules/on_alert.yaml", "policies/one_at_a_time.yaml", "actions/restart.yaml",
                "actions/deploy.yaml", "actions/workflows/deploy.yaml"):  # (the workflow used ops.restart)
        (ops_dir / rel).unlink()
    response = admin_api.post(f"{API}/packs/register", {"path": str(ops_dir)})
    assert response.status_code == 400
    assert response.json()["errors"] == [
        "actions: cannot remove ops.deploy, ops.restart (file gone): still referenced by ops.manual"
    ]
    assert Rule.objects.filter(ref="ops.on_alert").exists()  # all or nothing


def test_register_reports_every_error_and_writes_nothing(admin_api, ops_dir):
    write_pack(ops_dir, {
        "actions/broken.yaml": "name: broken\nrunner_type: teleport\nentry_point: x.sh\n",
        "triggers/garbled.yaml": "name: [unclosed\n",
    })
    response = admin_api.post(f"{API}/packs/register", {"path": str(ops_dir)})
    assert response.status_code == 400
    body = response.json()
    assert body["detail"] == f"pack at {ops_dir} has {len(body['errors'])} error(s)"
    assert len(body["errors"]) >= 2
    assert any(e.startswith("actions/broken.yaml: runner_type") for e in body["errors"])
    assert any(e.startswith("triggers/garbled.yaml (line") for e in body["errors"])
    assert not Pack.objects.filter(ref="ops").exists()
    assert not Action.objects.filter(ref__startswith="ops.").exists()


@pytest.mark.parametrize("path", ["missing", "file", "relative", None])
def test_register_needs_an_existing_directory(admin_api, tmp_path, path):
    (tmp_path / "file").write_text("x")
    body = {
        "missing": {"path": str(tmp_path / "nope")},
        "file": {"path": str(tmp_path / "file")},
        "relative": {"path": "packs/core"},
        None: {},
    }[path]
    response = admin_api.post(f"{API}/packs/register", body)
    assert response.status_code == 400
    assert list(response.json()) == ["path"]


def test_register_without_manifest_is_a_pack_error(admin_api, tmp_path):
    response = admin_api.post(f"{API}/packs/register", {"path": str(tmp_path)})
    assert response.status_code == 400
    assert response.json()["errors"] == ["pack.yaml: missing (every pack needs one)"]


@pytest.mark.parametrize("role", ["editor_api", "operator_api", "viewer_api"])
def test_register_is_for_superusers_only(request, ops_dir, role):
    client = request.getfixturevalue(role)
    assert client.post(f"{API}/packs/register", {"path": str(ops_dir)}).status_code == 403
    assert not Pack.objects.filter(ref="ops").exists()


def test_register_refuses_even_an_everything_grant_without_superuser(ops_dir, api):
    client = client_with([{"resource": "*", "actions": ["*"]}])
    assert client.post(f"{API}/packs/register", {"path": str(ops_dir)}).status_code == 403
    assert api.post(f"{API}/packs/register", {"path": str(ops_dir)}).status_code == 401
    assert not Pack.objects.filter(ref="ops").exists()


# --- POST /packs/install ------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["ops-1.0.0/", "", "./"])
def test_install_then_list_its_actions(editor_api, home, prefix):
    response = install(editor_api, targz(OPS_FILES, prefix=prefix))
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["pack"]["ref"] == "ops"
    assert body["created"]["actions"] == 2
    installed = home.resolve() / "packs" / "ops"
    assert body["pack"]["path"] == str(installed)
    assert (installed / "pack.yaml").is_file()
    assert (installed / "actions" / "restart.sh").stat().st_mode & 0o100  # scripts stay executable
    assert leftovers(home) == []

    actions = editor_api.get(f"{API}/packs/ops/actions").json()
    assert [a["ref"] for a in actions["results"]] == ["ops.deploy", "ops.restart"]


def test_reinstall_replaces_the_installed_copy(editor_api, home):
    assert install(editor_api, targz(OPS_FILES)).status_code == 201
    v2 = {k: v for k, v in OPS_FILES.items() if not k.startswith("policies/")}
    v2["pack.yaml"] = OPS_FILES["pack.yaml"].replace("1.0.0", "1.1.0")
    v2["actions/restart.sh"] = "#!/bin/sh\necho v2\n"
    response = install(editor_api, targz(v2))
    assert response.status_code == 200, response.content
    assert response.json()["removed"] == {"policies": 1}
    assert Pack.objects.get(ref="ops").version == "1.1.0"
    installed = home / "packs" / "ops"
    assert (installed / "actions" / "restart.sh").read_text() == "#!/bin/sh\necho v2\n"
    assert not (installed / "policies").exists()
    assert leftovers(home) == []


def test_broken_reinstall_leaves_the_old_pack_working(editor_api, home):
    assert install(editor_api, targz(OPS_FILES)).status_code == 201
    broken = dict(OPS_FILES)
    broken["pack.yaml"] = OPS_FILES["pack.yaml"].replace("1.0.0", "2.0.0")
    broken["actions/restart.yaml"] = "name: restart\nrunner_type: teleport\nentry_point: restart.sh\n"
    broken["actions/restart.sh"] = "#!/bin/sh\necho broken\n"
    response = install(editor_api, targz(broken))
    assert response.status_code == 400
    body = response.json()
    assert body["detail"] == f"pack in ops.tar.gz has {len(body['errors'])} error(s)"
    assert any(e.startswith("actions/restart.yaml: runner_type") for e in body["errors"])

    pack = Pack.objects.get(ref="ops")
    assert pack.version == "1.0.0" and pack.path == str(home.resolve() / "packs" / "ops")
    assert Action.objects.get(ref="ops.restart").runner_type_id == "shell"
    assert (home / "packs" / "ops" / "actions" / "restart.sh").read_text() == "#!/bin/sh\necho restarted\n"
    assert leftovers(home) == []
    assert editor_api.get(f"{API}/packs/ops/actions").json()["count"] == 2


def test_broken_first_install_writes_nothing(editor_api, home):
    broken = {**OPS_FILES, "rules/bad.yaml": "name: bad\ntrigger: ops.nope\naction: ops.restart\n"}
    response = install(editor_api, targz(broken))
    assert response.status_code == 400
    assert any(e.startswith("rules/bad.yaml: trigger") for e in response.json()["errors"])
    assert not Pack.objects.filter(ref="ops").exists()
    assert not (home / "packs" / "ops").exists()


@pytest.mark.parametrize("name", ["../evil", "ops/../../evil", "/tmp/evil-attune-test", "ops/actions/../../../evil"])
def test_path_traversal_is_rejected_and_nothing_is_written_outside(editor_api, home, tmp_path, name):
    data = targz(OPS_FILES, extra=[member(name, size=4)])
    response = install(editor_api, data)
    assert response.status_code == 400
    assert "file" in response.json()
    assert not (tmp_path / "evil").exists() and not (home / "evil").exists() and not (home / "packs" / "evil").exists()
    assert not Path("/tmp/evil-attune-test").exists()
    assert not Pack.objects.filter(ref="ops").exists()
    assert [p.name for p in (home / "packs").iterdir()] == []


@pytest.mark.parametrize("link", [
    member("ops/actions/passwd", tarfile.SYMTYPE, "/etc/passwd"),
    member("ops/actions/up", tarfile.SYMTYPE, "../../.."),
    member("ops/escape", tarfile.SYMTYPE, "../outside"),
    member("ops/hard", tarfile.LNKTYPE, "../../etc/passwd"),
    member("ops/hard_abs", tarfile.LNKTYPE, "/etc/passwd"),
    member("ops/dev", tarfile.CHRTYPE),
    member("ops/fifo", tarfile.FIFOTYPE),
])
def test_links_leaving_the_pack_and_special_files_are_rejected(editor_api, home, link):
    response = install(editor_api, targz(OPS_FILES, extra=[link]))
    assert response.status_code == 400, response.content
    assert "unsafe archive member" in response.json()["file"][0]
    assert not Pack.objects.filter(ref="ops").exists()
    assert not (home / "packs" / "ops").exists()
    assert leftovers(home) == []


def test_symlink_through_a_symlinked_directory_is_rejected(editor_api, home):
    """Each link looks harmless on its own (lexically inside the archive); together they leave it."""
    links = [member("ops/actions/up", tarfile.SYMTYPE, ".."), member("ops/actions/x", tarfile.SYMTYPE, "up/../../..")]
    response = install(editor_api, targz(OPS_FILES, extra=links))
    assert response.status_code == 400
    assert "unsafe archive member" in response.json()["file"][0]
    assert not Pack.objects.filter(ref="ops").exists()
    assert leftovers(home) == []


def test_symlink_inside_the_pack_is_allowed(editor_api, home):
    link = member("ops/actions/restart_alias.sh", tarfile.SYMTYPE, "restart.sh")
    response = install(editor_api, targz(OPS_FILES, extra=[link]))
    assert response.status_code == 201, response.content
    assert (home / "packs" / "ops" / "actions" / "restart_alias.sh").read_text() == "#!/bin/sh\necho restarted\n"


@pytest.mark.parametrize("data", [
    b"definitely not an archive",
    targz(OPS_FILES, compress=False),  # a tar, but not gzip-compressed
    gzip.compress(b"gzip, but not a tar archive" * 50),
    targz(OPS_FILES)[:200],  # truncated
])
def test_not_a_tarball_is_400_naming_file(editor_api, home, data):
    response = install(editor_api, data)
    assert response.status_code == 400
    assert list(response.json()) == ["file"]
    assert leftovers(home) == []


def test_missing_upload_is_400_naming_file(editor_api, home):
    response = editor_api.post(f"{API}/packs/install", {}, format="multipart")
    assert response.status_code == 400
    assert list(response.json()) == ["file"]


def test_archive_without_pack_yaml_is_400(editor_api, home):
    files = {k: v for k, v in OPS_FILES.items() if k != "pack.yaml"}
    response = install(editor_api, targz(files))
    assert response.status_code == 400
    assert "no pack.yaml" in response.json()["file"][0]
    # Two top-level directories: which one is the pack is ambiguous.
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for prefix in ("a/", "b/"):
            info = tarfile.TarInfo(prefix + "pack.yaml")
            info.size = len(b"ref: ops\n")
            tar.addfile(info, io.BytesIO(b"ref: ops\n"))
    response = install(editor_api, buffer.getvalue())
    assert response.status_code == 400 and "no pack.yaml" in response.json()["file"][0]
    assert not Pack.objects.filter(ref="ops").exists()


def test_invalid_ref_in_manifest_is_a_pack_error(editor_api, home):
    response = install(editor_api, targz({"pack.yaml": "ref: Not-Valid\n"}))
    assert response.status_code == 400
    assert response.json()["errors"][0].startswith("pack.yaml: ref:")


def test_member_and_size_caps(editor_api, home, monkeypatch):
    monkeypatch.setattr(services, "MAX_INSTALL_MEMBERS", 5)
    response = install(editor_api, targz(OPS_FILES))
    assert response.status_code == 400 and "more than 5 members" in response.json()["file"][0]
    monkeypatch.setattr(services, "MAX_INSTALL_MEMBERS", 10_000)
    monkeypatch.setattr(services, "MAX_INSTALL_BYTES", 1000)
    big = {**OPS_FILES, "actions/blob.bin": b"\0" * 5000}
    response = install(editor_api, targz(big))
    assert response.status_code == 400 and "more than 1000 bytes" in response.json()["file"][0]
    assert not Pack.objects.filter(ref="ops").exists()


@pytest.mark.parametrize("role", ["viewer_api", "operator_api"])
def test_install_needs_packs_create(request, home, role):
    client = request.getfixturevalue(role)
    assert install(client, targz(OPS_FILES)).status_code == 403
    assert not Pack.objects.filter(ref="ops").exists()
    assert not (home / "packs" / "ops").exists()


def test_pack_limited_editor_installs_only_its_packs(home):
    grants = [{"resource": "packs", "actions": ["view", "create", "update"]}]
    other = client_with(grants, packs=["web"])
    response = other.post(f"{API}/packs/install", {"file": SimpleUploadedFile("o.tar.gz", targz(OPS_FILES))},
                          format="multipart")
    assert response.status_code == 403
    assert not Pack.objects.filter(ref="ops").exists() and not (home / "packs" / "ops").exists()
    mine = client_with(grants, packs=["ops"])
    assert install(mine, targz(OPS_FILES)).status_code == 201


def test_replacing_an_installed_pack_needs_packs_update(home, editor_api):
    assert install(editor_api, targz(OPS_FILES)).status_code == 201
    create_only = client_with([{"resource": "packs", "actions": ["view", "create"]}])
    response = install(create_only, targz(OPS_FILES))
    assert response.status_code == 403
    assert "packs:update" in response.json()["detail"]


@pytest.mark.parametrize("client_fixture", ["editor_api", "admin_api"])
def test_installing_over_a_shipped_pack_is_409(request, home, client_fixture):
    client = request.getfixturevalue(client_fixture)
    response = install(client, targz({"pack.yaml": "ref: core\nversion: 9.9.9\n"}, prefix="core/"))
    assert response.status_code == 409
    assert "shipped" in response.json()["detail"]
    assert not (home / "packs" / "core").exists()
    assert not Pack.objects.filter(ref="core", version="9.9.9").exists()


def test_installing_over_a_pack_registered_from_another_directory_is_409(admin_api, editor_api, home, ops_dir):
    register_pack(ops_dir)
    response = install(editor_api, targz(OPS_FILES))
    assert response.status_code == 409
    assert Pack.objects.get(ref="ops").path == str(ops_dir)


def test_reinstall_keeps_the_config(editor_api, home):
    assert install(editor_api, targz(OPS_FILES)).status_code == 201
    assert editor_api.put(f"{API}/packs/ops/config", {"config": {"api_key": SECRET}}).status_code == 200
    assert install(editor_api, targz(OPS_FILES)).status_code == 200
    assert services.pack_config(Pack.objects.get(ref="ops"))["api_key"] == SECRET


# --- GET/PUT /packs/{ref}/config ----------------------------------------------------------------------


@pytest.fixture
def ops(ops_dir):
    register_pack(ops_dir)
    return Pack.objects.get(ref="ops")


def test_config_put_applies_defaults_encrypts_secrets_and_redacts(editor_api, ops):
    response = editor_api.put(f"{API}/packs/ops/config", {"config": {"api_key": SECRET, "hosts": ["a", "b"]}})
    assert response.status_code == 200, response.content
    assert response.json() == {"pack": "ops", "config": {
        "api_key": "********", "hosts": ["a", "b"], "api_url": "https://api.example.com", "port": 443,
    }}
    ops.refresh_from_db()
    assert SECRET not in json.dumps(ops.config)
    assert set(ops.config) == {"values", "secrets"} and set(ops.config["secrets"]) == {"api_key"}
    with connection.cursor() as cursor:  # the raw column, not the model's view of it
        cursor.execute("SELECT config FROM packs_pack WHERE ref = %s", ["ops"])
        assert SECRET not in str(cursor.fetchone()[0])

    assert services.pack_config(ops) == {
        "api_key": SECRET, "hosts": ["a", "b"], "api_url": "https://api.example.com", "port": 443,
    }
    assert services.redacted_pack_config(ops)["api_key"] == "********"
    read = editor_api.get(f"{API}/packs/ops/config")
    assert read.status_code == 200
    assert read.json()["config"]["api_key"] == "********"
    assert SECRET not in read.content.decode()


def test_config_validation_names_every_failing_field(editor_api, ops):
    response = editor_api.put(f"{API}/packs/ops/config", {"config": {"port": "abc", "hosts": ["a", 5]}})
    assert response.status_code == 400
    errors = response.json()["config"]
    assert "api_key: this field is required" in errors
    assert any(e.startswith("port: 'abc' is not of type 'integer'") for e in errors)
    assert any(e.startswith("hosts[1]: 5 is not of type 'string'") for e in errors)
    ops.refresh_from_db()
    assert ops.config == {}


def test_config_errors_about_secrets_do_not_echo_the_value(editor_api, ops):
    response = editor_api.put(f"{API}/packs/ops/config", {"config": {"api_key": "short"}})
    assert response.status_code == 400
    assert response.json()["config"] == ["api_key: secret value fails the 'minLength' rule of the schema"]
    assert "short" not in response.content.decode().replace("'minLength'", "")


def test_config_must_be_an_object(editor_api, ops):
    response = editor_api.put(f"{API}/packs/ops/config", {"config": ["x"]})
    assert response.status_code == 400 and list(response.json()) == ["config"]
    assert editor_api.put(f"{API}/packs/ops/config", {}).status_code == 400


def test_sending_back_the_redacted_marker_keeps_the_secret(editor_api, ops):
    editor_api.put(f"{API}/packs/ops/config", {"config": {"api_key": SECRET}})
    read = editor_api.get(f"{API}/packs/ops/config").json()["config"]
    read["port"] = 8443
    assert editor_api.put(f"{API}/packs/ops/config", {"config": read}).status_code == 200
    ops.refresh_from_db()
    assert services.pack_config(ops)["api_key"] == SECRET and services.pack_config(ops)["port"] == 8443


def test_redacted_marker_without_a_stored_secret_is_rejected(editor_api, ops):
    response = editor_api.put(f"{API}/packs/ops/config", {"config": {"api_key": "********"}})
    assert response.status_code == 400
    assert response.json()["config"] == ["api_key: no stored secret to keep; send the real value"]


def test_decrypting_the_config_needs_keys_decrypt(admin_api, editor_api, ops):
    editor_api.put(f"{API}/packs/ops/config", {"config": {"api_key": SECRET}})
    assert admin_api.get(f"{API}/packs/ops/config?decrypt=true").json()["config"]["api_key"] == SECRET
    denied = editor_api.get(f"{API}/packs/ops/config?decrypt=true")
    assert denied.status_code == 403 and SECRET not in denied.content.decode()
    limited = client_with([{"resource": "*", "actions": ["view", "decrypt"]}], packs=["web"])
    PackFactory(ref="web")
    assert limited.get(f"{API}/packs/ops/config?decrypt=true").status_code == 404  # ops is invisible to it
    ops_decrypter = client_with([{"resource": "*", "actions": ["view", "decrypt"]}], packs=["ops"])
    assert ops_decrypter.get(f"{API}/packs/ops/config?decrypt=true").json()["config"]["api_key"] == SECRET


def test_config_permissions(viewer_api, operator_api, editor_api, ops):
    assert viewer_api.get(f"{API}/packs/ops/config").status_code == 200
    for client in (viewer_api, operator_api):
        assert client.put(f"{API}/packs/ops/config", {"config": {"api_key": SECRET}}).status_code == 403
    assert editor_api.get(f"{API}/packs/nope/config").status_code == 404
    other = client_with([{"resource": "packs", "actions": ["view", "update"]}], packs=["web"])
    assert other.put(f"{API}/packs/ops/config", {"config": {"api_key": SECRET}}).status_code == 404


def test_unconfigured_pack_reads_its_defaults(viewer_api, ops):
    assert viewer_api.get(f"{API}/packs/ops/config").json()["config"] == {
        "api_url": "https://api.example.com", "port": 443,
    }
    assert services.pack_config(ops) == {"api_url": "https://api.example.com", "port": 443}


def test_reregistering_keeps_the_config(admin_api, editor_api, ops, ops_dir):
    editor_api.put(f"{API}/packs/ops/config", {"config": {"api_key": SECRET, "port": 22}})
    assert admin_api.post(f"{API}/packs/register", {"path": str(ops_dir)}).status_code == 200
    ops.refresh_from_db()
    assert services.pack_config(ops)["api_key"] == SECRET and services.pack_config(ops)["port"] == 22


def test_stackstorm_style_flat_config_schema(editor_api):
    pack = PackFactory(ref="flat", config_schema={
        "token": {"type": "string", "required": True, "secret": True},
        "region": {"type": "string", "default": "eu-west-1", "enum": ["eu-west-1", "us-east-1"]},
    })
    bad = editor_api.put(f"{API}/packs/flat/config", {"config": {"region": "mars"}})
    assert bad.status_code == 400
    assert "token: this field is required" in bad.json()["config"]
    assert any(e.startswith("region: 'mars' is not one of") for e in bad.json()["config"])
    ok = editor_api.put(f"{API}/packs/flat/config", {"config": {"token": SECRET}})
    assert ok.json()["config"] == {"token": "********", "region": "eu-west-1"}
    pack.refresh_from_db()
    assert SECRET not in json.dumps(pack.config)
    assert services.pack_config(pack) == {"token": SECRET, "region": "eu-west-1"}


def test_invalid_flat_config_schema_is_reported_not_a_500(editor_api):
    PackFactory(ref="odd", config_schema={"token": {"type": "strng"}})
    response = editor_api.put(f"{API}/packs/odd/config", {"config": {"token": "x"}})
    assert response.status_code == 400
    assert response.json()["config"][0].startswith("config_schema: the pack's config_schema is invalid")


def test_pack_without_schema_accepts_any_object(editor_api):
    pack = PackFactory(ref="free")
    assert editor_api.put(f"{API}/packs/free/config", {"config": {"anything": [1, 2]}}).status_code == 200
    pack.refresh_from_db()
    assert services.pack_config(pack) == {"anything": [1, 2]}


def test_secret_ciphertext_is_bound_to_its_pack_and_field(editor_api, ops):
    editor_api.put(f"{API}/packs/ops/config", {"config": {"api_key": SECRET}})
    ops.refresh_from_db()
    other = PackFactory(ref="other", config_schema=ops.config_schema)
    other.config = {"values": {}, "secrets": {"api_key": ops.config["secrets"]["api_key"]}}
    other.save()
    assert "api_key" not in services.pack_config(other)  # copied ciphertext does not decrypt
    assert services.redacted_pack_config(other)["api_key"] == "********"


def test_reencrypt_pack_configs_after_rotation(settings, editor_api, ops):
    import base64
    import os

    from apps.keys.crypto import get_ring, parse_ring

    keys = {1: os.urandom(32)}
    settings.ATTUNE_ENCRYPTION_KEYS = f"1:{base64.b64encode(keys[1]).decode()}"
    editor_api.put(f"{API}/packs/ops/config", {"config": {"api_key": SECRET}})
    settings.ATTUNE_ENCRYPTION_KEYS += f",2:{base64.b64encode(os.urandom(32)).decode()}"
    assert services.reencrypt_pack_configs() == 1
    ops.refresh_from_db()
    assert ops.config["secrets"]["api_key"].startswith("v2:")
    assert services.pack_config(ops)["api_key"] == SECRET
    assert get_ring().current_version == 2 and len(parse_ring(settings.ATTUNE_ENCRYPTION_KEYS)) == 2
    assert services.reencrypt_pack_configs() == 0


# --- GET /packs/{ref}/<components> --------------------------------------------------------------------

KINDS = ["actions", "rules", "triggers", "sensors", "workflows", "policies"]


def test_component_lists_of_a_registered_pack(viewer_api, ops):
    PackFactory(ref="web")
    ActionFactory(pack=Pack.objects.get(ref="web"), name="elsewhere")
    refs = {kind: [row["ref"] for row in viewer_api.get(f"{API}/packs/ops/{kind}").json()["results"]]
            for kind in KINDS}
    assert refs == {
        "actions": ["ops.deploy", "ops.restart"],
        "rules": ["ops.on_alert"],
        "triggers": ["ops.alert"],
        "sensors": ["ops.watcher"],
        "workflows": ["ops.deploy"],
        "policies": ["ops.one_at_a_time"],
    }
    rule = viewer_api.get(f"{API}/packs/ops/rules").json()["results"][0]
    assert rule["trigger"] == "ops.alert" and rule["action"] == "ops.restart"
    sensor = viewer_api.get(f"{API}/packs/ops/sensors").json()["results"][0]
    assert sensor["trigger_types"] == ["ops.alert"]
    workflow = viewer_api.get(f"{API}/packs/ops/workflows").json()["results"][0]
    assert workflow["valid"] is True and workflow["errors"] == []
    assert workflow["definition"]["tasks"]["a"]["name"] == "a"
    assert workflow["entry_point"] == "workflows/deploy.yaml"


def test_workflow_action_without_definition_is_reported_invalid(viewer_api):
    from tests.factories import runtime

    pack = PackFactory(ref="wf")
    ActionFactory(pack=pack, name="orphan", runner_type=runtime("workflow"), entry_point="workflows/orphan.yaml")
    row = viewer_api.get(f"{API}/packs/wf/workflows").json()["results"][0]
    assert row["valid"] is False and row["definition"] is None and "no workflow definition" in row["errors"][0]


def _populate(pack: Pack, n: int) -> None:
    for i in range(n):
        trigger = TriggerFactory(pack=pack, name=f"t{i}")
        sensor = SensorFactory(pack=pack, name=f"s{i}")
        sensor.trigger_types.add(trigger)
        rule = RuleFactory(pack=pack, name=f"r{i}", trigger=trigger)
        PolicyFactory(pack=pack, name=f"p{i}", action=rule.action)
        WorkflowDefinitionFactory(action__pack=pack, action__name=f"w{i}")


@pytest.mark.parametrize("kind", KINDS)
def test_component_lists_use_a_constant_number_of_queries(admin_api, kind):
    small, large = PackFactory(ref="small"), PackFactory(ref="large")
    _populate(small, 1)
    _populate(large, 6)
    counts = {}
    for pack in ("small", "large"):
        with CaptureQueriesContext(connection) as queries:
            response = admin_api.get(f"{API}/packs/{pack}/{kind}")
        assert response.status_code == 200
        assert response.json()["count"] >= 1
        counts[pack] = len(queries)
    assert counts["small"] == counts["large"], counts
    assert counts["large"] <= 5


def test_component_lists_need_the_component_view_grant(ops):
    client = client_with([{"resource": "packs", "actions": ["view"]}, {"resource": "actions", "actions": ["view"]}])
    assert client.get(f"{API}/packs/ops/actions").status_code == 200
    for kind in ("rules", "triggers", "sensors", "workflows", "policies"):
        response = client.get(f"{API}/packs/ops/{kind}")
        assert response.status_code == 403, kind
        assert f"{kind}:view" in response.json()["detail"]


def test_component_list_grant_is_checked_for_the_pack(ops):
    PackFactory(ref="web")
    client = client_with([
        {"resource": "packs", "actions": ["view"]},
        {"resource": "rules", "actions": ["view"], "packs": ["web"]},
    ])
    assert client.get(f"{API}/packs/ops/rules").status_code == 403
    assert client.get(f"{API}/packs/web/rules").status_code == 200
    hidden = client_with([{"resource": "*", "actions": ["view"]}], packs=["web"])
    assert hidden.get(f"{API}/packs/ops/actions").status_code == 404


def test_component_lists_paginate_and_404(viewer_api, ops):
    page = viewer_api.get(f"{API}/packs/ops/actions?page_size=1").json()
    assert page["count"] == 2 and len(page["results"]) == 1 and page["next"]
    assert viewer_api.get(f"{API}/packs/nope/actions").status_code == 404
    # List filters of /packs do not apply to a pack's sub-lists.
    assert viewer_api.get(f"{API}/packs/ops/actions?search=zzz&ref=other").json()["count"] == 2


def test_component_lists_read_current_rows(viewer_api, ops):
    Rule.objects.filter(ref="ops.on_alert").update(enabled=False)
    assert viewer_api.get(f"{API}/packs/ops/rules").json()["results"][0]["enabled"] is False
