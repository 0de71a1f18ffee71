"""Registering a pack directory: every error with its file, all or nothing, update and prune."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from apps.actions.models import Action
from apps.packs.models import Pack
from apps.packs.registrar import PackError, register_pack
from apps.rules.models import Rule
from apps.triggers.models import Trigger
from apps.workflows.models import WorkflowDefinition
from tests.executions.conftest import write

pytestmark = pytest.mark.django_db

CORE = Path(__file__).resolve().parent.parent / "packs" / "core"




@pytest.fixture
def ops_pack(tmp_path):
    root = tmp_path / "ops"
    write(root, "pack.yaml", "ref: ops\nversion: 1.2.0\ndescription: Ops tools\n")
    write(root, "actions/restart.yaml", """
        name: restart
        runner_type: shell
        entry_point: restart.sh
        parameters:
          unit: {type: string, required: true}
          token: {type: string, secret: true}
    """)
    write(root, "actions/restart.sh", "#!/bin/sh\necho restarted\n")
    write(root, "actions/deploy.yaml", """
        name: deploy
        runner_type: workflow
        entry_point: workflows/deploy.yaml
    """)
    write(root, "actions/workflows/deploy.yaml",
          "version: 1.0\ntasks:\n  - name: a\n    action: ops.restart\n    input: {unit: web}\n")
    write(root, "triggers/alert.yaml", "name: alert\npayload_schema: {type: object}\n")
    write(root, "rules/on_alert.yaml", """
        name: on_alert
        trigger: ops.alert
        criteria:
          payload.severity: {type: eq, pattern: critical}
        action: ops.restart
        action_params: {unit: "{{ payload.unit }}"}
    """)
    write(root, "policies/one_at_a_time.yaml", "name: one_at_a_time\naction: ops.restart\ntype: concurrency\nthreshold: 1\n")
    return root


def test_shipped_core_pack_registers_everything_the_spec_lists():
    register_pack(CORE)
    actions = set(Action.objects.filter(pack__ref="core").values_list("ref", flat=True))
    assert {"core.noop", "core.echo", "core.local", "core.sleep", "core.http_request", "core.ask"} <= actions
    triggers = set(Trigger.objects.filter(pack__ref="core").values_list("ref", flat=True))
    assert {"core.webhook", "core.intervaltimer", "core.crontimer", "core.datetimetimer", "core.rruletimer",
            "core.execution_completed"} <= triggers


def test_registers_components_in_dependency_order(ops_pack):
    result = register_pack(ops_pack)
    assert result.created == {"actions": 2, "triggers": 1, "rules": 1, "policies": 1}
    pack = Pack.objects.get(ref="ops")
    assert pack.source == "pack" and pack.version == "1.2.0" and pack.path == str(ops_pack)
    rule = Rule.objects.get(ref="ops.on_alert")
    assert rule.trigger.ref == "ops.alert" and rule.action.ref == "ops.restart"
    assert rule.file_path == "rules/on_alert.yaml"
    assert WorkflowDefinition.objects.get(action__ref="ops.deploy").definition["tasks"]["a"]["name"] == "a"


def test_every_error_is_reported_with_its_file_and_nothing_is_written(ops_pack):
    write(ops_pack, "actions/broken.yaml", "name: broken\nrunner_type: teleport\nentry_point: x.sh\n")
    write(ops_pack, "rules/bad.yaml", "name: bad\ntrigger: ops.alert\naction: ops.restart\ncriteria: {x: {type: near}}\n")
    write(ops_pack, "triggers/garbled.yaml", "name: [unclosed\n")
    with pytest.raises(PackError) as info:
        register_pack(ops_pack)
    text = "\n".join(info.value.errors)
    assert "actions/broken.yaml: runner_type" in text
    assert "rules/bad.yaml: criteria" in text and "unknown operator 'near'" in text
    assert "triggers/garbled.yaml (line" in text and "invalid YAML" in text
    assert not Pack.objects.filter(ref="ops").exists()
    assert not Action.objects.filter(ref__startswith="ops.").exists()


def test_reregistering_updates_and_prunes_but_keeps_api_rows(ops_pack):
    register_pack(ops_pack)
    pack = Pack.objects.get(ref="ops")
    api_action = Action.objects.create(pack=pack, name="from_api", runner_type_id="noop", source="api")
    (ops_pack / "policies" / "one_at_a_time.yaml").unlink()
    write(ops_pack, "actions/restart.yaml", "name: restart\nrunner_type: shell\nentry_point: restart.sh\ntimeout: 5\n"
          "parameters:\n  unit: {type: string, required: true}\n")
    result = register_pack(ops_pack)
    assert result.removed == {"policies": 1}
    assert Action.objects.get(ref="ops.restart").timeout == 5
    assert Action.objects.filter(pk=api_action.pk).exists()


def test_failed_reregistration_leaves_the_previous_version_intact(ops_pack):
    register_pack(ops_pack)
    write(ops_pack, "actions/restart.yaml", "name: restart\nrunner_type: shell\nentry_point: restart.sh\ntimeout: 5\n"
          "parameters:\n  unit: {type: string, required: true}\n")
    write(ops_pack, "actions/other.yaml", "name: Other Name\nrunner_type: shell\nentry_point: x.sh\n")
    with pytest.raises(PackError, match="actions/other.yaml: name"):
        register_pack(ops_pack)
    assert Action.objects.get(ref="ops.restart").timeout == 600


def test_missing_manifest_and_bad_ref(tmp_path):
    with pytest.raises(PackError, match="pack.yaml: missing"):
        register_pack(tmp_path)
    write(tmp_path, "pack.yaml", "ref: Not-Valid\n")
    with pytest.raises(PackError, match="pack.yaml: ref"):
        register_pack(tmp_path)


def test_management_command(ops_pack, capsys):
    call_command("attune", "pack", "register", str(ops_pack))
    assert "pack ops registered" in capsys.readouterr().out
    shutil.rmtree(ops_pack / "rules")
    write(ops_pack, "actions/bad.yaml", "runner_type: shell\n")
    with pytest.raises(CommandError, match="actions/bad.yaml: entry_point"):
        call_command("attune", "pack", "register", str(ops_pack))
    assert Pack.objects.get(ref="ops").registered_at <= timezone.now()


def test_yaml_booleans_and_dates_are_read_as_the_pack_format_means(ops_pack):
    write(ops_pack, "policies/retry.yaml", "name: retry\naction: ops.restart\ntype: retry\non: [failure, timeout]\n"
          "max_retries: 2\n")
    register_pack(ops_pack)
    from apps.executions.models import Policy

    assert Policy.objects.get(ref="ops.retry").on == ["failure", "timeout"]
