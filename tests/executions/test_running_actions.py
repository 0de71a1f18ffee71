"""Running actions for real: processes, stdin formats, secrets, output bounds, timeouts, cancel."""
from __future__ import annotations

import json
import subprocess
import time

import pytest

from apps.executions.models import Execution
from apps.keys import services as keys
from apps.keys.models import Key

from .conftest import wait_for

pytestmark = pytest.mark.timeout(120)


def execute(client, ref, parameters=None, **extra):
    response = client.post(f"/api/v1/actions/{ref}/execute", {"parameters": parameters or {}, **extra}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def no_process(marker: str) -> bool:
    return subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 1


def test_secret_parameter_reaches_only_stdin(admin_api, testpack):
    body = execute(admin_api, "testpack.show", {"token": "tok-Secret-42", "who": "ops"})
    assert body["status"] in {"scheduled", "running", "succeeded"}
    assert body["parameters"]["token"] == "********"
    done = wait_for(body["id"], "succeeded")
    stdout = done.result["stdout"]
    assert "tok-Secret-42" not in stdout  # not in env, not in argv
    assert f"ATTUNE_EXECUTION_ID={done.pk}" in stdout and "ATTUNE_ACTION=testpack.show" in stdout
    assert "ATTUNE_PACK=testpack" in stdout and f"cwd: {testpack}" in stdout
    assert "ATTUNE_DATABASE_URL" not in stdout and "DJANGO_SETTINGS_MODULE" not in stdout
    stdin = json.loads((testpack / f"stdin.{done.pk}").read_text())
    assert stdin == {"who": "ops", "token": "tok-Secret-42", "count": 1}
    row = Execution.objects.get(pk=done.pk)
    assert row.parameters == {"who": "ops", "token": "********", "count": 1}
    assert "tok-Secret-42" not in json.dumps(row.result) and "tok-Secret-42" not in row.secret_parameters
    detail = admin_api.get(f"/api/v1/executions/{done.pk}").content.decode()
    assert "tok-Secret-42" not in detail


def test_secret_key_through_a_template_stays_secret(admin_api, testpack):
    key = Key(name="api_token", scope="system")
    keys.apply_value(key, "kv-Secret-7", secret=True)
    key.save()
    body = execute(admin_api, "testpack.show", {"who": "{{ kv.system.api_token }}"})
    assert body["parameters"]["who"] == "********"
    done = wait_for(body["id"], "succeeded")
    assert json.loads((testpack / f"stdin.{done.pk}").read_text())["who"] == "kv-Secret-7"
    assert "kv-Secret-7" not in json.dumps(done.result) and "kv-Secret-7" not in json.dumps(done.parameters)
    rerun = admin_api.post(f"/api/v1/executions/{done.pk}/rerun", {}, format="json").json()
    assert rerun["parameters"]["who"] == "********"  # still secret in the re-run
    again = wait_for(rerun["id"], "succeeded")
    assert again.original_id == done.pk
    assert "kv-Secret-7" not in json.dumps(again.result) + json.dumps(again.parameters)
    assert json.loads((testpack / f"stdin.{again.pk}").read_text())["who"] == "kv-Secret-7"


def test_parameter_validation_names_the_field(admin_api, testpack):
    bad = admin_api.post("/api/v1/actions/testpack.show/execute",
                         {"parameters": {"count": 0, "nope": 1}}, format="json")
    assert bad.status_code == 400
    errors = bad.json()["parameters"]
    assert "nope" in errors and "unknown parameter" in errors["nope"][0]
    assert "count" in errors and "minimum" in errors["count"][0]  # reported together, not one at a time
    missing = admin_api.post("/api/v1/executions", {"action": "testpack.sleepy", "parameters": {}}, format="json")
    assert missing.status_code == 400 and missing.json()["parameters"] == {"marker": ["this parameter is required"]}
    wrong_type = admin_api.post("/api/v1/actions/testpack.show/execute", {"parameters": {"count": "x"}}, format="json")
    assert wrong_type.status_code == 400 and "count" in wrong_type.json()["parameters"]
    bad_template = admin_api.post("/api/v1/actions/testpack.show/execute",
                                  {"parameters": {"who": "{{ kv.system.missing_key }}"}}, format="json")
    assert bad_template.status_code == 400
    assert "missing_key" in bad_template.json()["parameters"]["who"][0]
    assert Execution.objects.count() == 0


def test_fifty_megabytes_of_output_are_truncated_at_the_bound(admin_api, testpack, settings):
    body = execute(admin_api, "testpack.flood")
    done = wait_for(body["id"], "succeeded", timeout=60)
    assert done.result["stdout_truncated"] is True
    assert len(done.result["stdout"]) == settings.ATTUNE_OUTPUT_MAX_BYTES
    assert done.result["stderr"] == "done\n" and done.result["stderr_truncated"] is False


def test_timeout_kills_the_whole_process_group(admin_api, testpack):
    marker = str(time.time_ns())[-9:]
    started = time.monotonic()
    body = execute(admin_api, "testpack.sleepy", {"marker": marker})
    done = wait_for(body["id"], "timeout", timeout=15)
    assert time.monotonic() - started < 10
    assert done.result["error"] == "timed out after 2 s" and done.result["stdout"] == "started\n"
    time.sleep(0.3)
    assert no_process(f"1000.{marker}") and no_process(f"1001.{marker}")


def test_cancel_a_running_action(admin_api, testpack):
    marker = str(time.time_ns())[-9:]
    body = execute(admin_api, "testpack.sleepy", {"marker": marker}, timeout=60)
    wait_for(body["id"], "running")
    time.sleep(0.5)
    response = admin_api.post(f"/api/v1/executions/{body['id']}/cancel")
    assert response.status_code == 200 and response.json()["status"] in {"canceling", "canceled"}
    done = wait_for(body["id"], "canceled", timeout=10)
    assert done.finished_at is not None
    time.sleep(0.3)
    assert no_process(f"1000.{marker}") and no_process(f"1001.{marker}")
    again = admin_api.post(f"/api/v1/executions/{body['id']}/cancel")
    assert again.status_code == 409


def test_output_can_be_tailed_while_running(admin_api, testpack):
    body = execute(admin_api, "testpack.ticker", {"lines": 8, "delay": 0.25})
    wait_for(body["id"], "running")
    offset, seen, polls_while_running = 0, "", 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        page = admin_api.get(f"/api/v1/executions/{body['id']}/output?stream=stdout&offset={offset}").json()
        seen += page["data"]
        offset = page["next_offset"]
        if page["complete"]:
            break
        if page["data"]:
            polls_while_running += 1
        time.sleep(0.2)
    assert polls_while_running >= 2, "output was not visible before the action ended"
    assert [json.loads(line)["line"] for line in seen.splitlines()] == list(range(8))
    done = Execution.objects.get(pk=body["id"])
    assert done.result["data"] == [{"line": i} for i in range(8)]


def test_undeclared_output_format_fails_with_a_clear_error(admin_api, testpack):
    done = wait_for(execute(admin_api, "testpack.badjson")["id"], "failed")
    assert done.result["exit_code"] == 0
    assert done.result["error"].startswith("stdout is not valid JSON (output_format: json)")


def test_parameter_formats(admin_api, testpack):
    yaml_run = wait_for(execute(admin_api, "testpack.formats", {"items": [1, 2]})["id"], "succeeded")
    assert yaml_run.result["data"]["raw"] == "flag: true\nitems:\n- 1\n- 2\n"
    dotenv = wait_for(execute(admin_api, "testpack.dotenv", {"msg": "it's ok", "n": 3, "obj": {"a": 1}})["id"],
                      "succeeded")
    assert dotenv.result["data"] == {"msg": "it's ok", "n": 3, "obj": {"a": 1}}


def test_core_pack_actions(admin_api, testpack):
    from apps.packs.registrar import register_pack, shipped_pack_dirs

    for path in shipped_pack_dirs():
        register_pack(path)
    echo = wait_for(execute(admin_api, "core.echo", {"message": "hello 'world'"})["id"], "succeeded")
    assert echo.result["stdout"] == "hello 'world'\n"
    local = wait_for(execute(admin_api, "core.local", {"cmd": "echo $((6*7)); exit 3"})["id"], "failed")
    assert local.result["exit_code"] == 3 and local.result["stdout"] == "42\n"
    noop = wait_for(execute(admin_api, "core.noop")["id"], "succeeded")
    assert noop.result == {}
    # the shell reads its parameter document itself: every line, quotes, backslashes, blanks and all
    tricky = "  two  spaces, a \\ backslash, 'quotes' \"too\"\nsecond line\\n\n\nafter a blank\t$HOME `x`"
    echoed = wait_for(execute(admin_api, "core.echo", {"message": tricky})["id"], "succeeded")
    assert echoed.result["stdout"] == tricky + "\n"
    printed = wait_for(execute(admin_api, "core.local", {"cmd": "printf '%s|' \"$cmd\" \"$0\"; echo"})["id"],
                       "succeeded")
    assert printed.result["stdout"] == "|/bin/sh|\n"  # the command's shell has none of the wrapper's variables
    stats = admin_api.get("/api/v1/executions/stats?pack=core").json()
    assert stats["by_status"] == {"succeeded": 4, "failed": 1} and stats["total"] == 5


def test_secret_pack_config_through_a_template_stays_secret(admin_api, testpack):
    from apps.packs.models import Pack
    from apps.packs.services import set_pack_config

    pack = Pack.objects.get(ref="testpack")
    pack.config_schema = {"type": "object", "properties": {"api_key": {"type": "string", "secret": True},
                                                           "region": {"type": "string", "default": "eu"}}}
    pack.save()
    set_pack_config(pack, {"api_key": "cfg-Secret-9"})
    body = execute(admin_api, "testpack.show", {"who": "{{ pack.config.api_key }}-{{ pack.config.region }}"})
    assert body["parameters"]["who"] == "********"
    done = wait_for(body["id"], "succeeded")
    assert json.loads((testpack / f"stdin.{done.pk}").read_text())["who"] == "cfg-Secret-9-eu"
    assert "cfg-Secret-9" not in json.dumps(done.result) + json.dumps(done.parameters)


def test_live_output_masks_a_secret_split_across_reads(admin_api, testpack):
    from apps.executions.models import OutputChunk

    body = execute(admin_api, "testpack.leaky", {"token": "Split-Secret-123456"})
    done = wait_for(body["id"], "succeeded", timeout=20)  # closing stdout/stderr early is not a failure
    assert done.result["stdout"] == "token=******** done\n"
    live = "".join(c.data for c in OutputChunk.objects.filter(execution_id=done.pk, stream="stdout").order_by("offset"))
    assert "Split-Secret" not in live and "123456" not in live
    assert done.result["stdout"].startswith(live)  # offsets of the live stream match the stored result


def test_nul_bytes_and_invalid_utf8_in_output_are_stored(admin_api, testpack):
    # PostgreSQL's jsonb refuses U+0000: output is stored with U+FFFD in its place, in both modes.
    from apps.packs.registrar import register_pack, shipped_pack_dirs

    for path in shipped_pack_dirs():
        register_pack(path)
    body = execute(admin_api, "core.local", {"cmd": "printf 'a\\000b\\377c'"})
    done = wait_for(body["id"], "succeeded")
    assert done.result["stdout"] == "a\ufffdb\ufffdc"
