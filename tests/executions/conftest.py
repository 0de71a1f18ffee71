"""A real worker (Celery over the mode's broker, thread pool) and a test pack on disk."""
from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest

from apps.executions.models import Execution
from apps.packs.registrar import register_pack
from apps.packs.runtimes import sync_builtin_runtimes

ROOT = Path(__file__).resolve().parents[2]


def write(root: Path, rel: str, text: str, mode: int | None = None) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    if mode is not None:
        path.chmod(mode)


@pytest.fixture
def testpack(tmp_path, transactional_db, worker):
    """A pack exercising stdin formats, secrets, output bounds, timeouts and cancel."""
    sync_builtin_runtimes()  # a transactional test's flush removed what the data migration made
    root = tmp_path / "testpack"
    write(root, "pack.yaml", "ref: testpack\nversion: 1.0.0\n")
    write(root, "actions/show.yaml", """
        name: show
        runner_type: shell
        entry_point: show.sh
        parameters:
          who: {type: string, default: world}
          token: {type: string, secret: true}
          count: {type: integer, default: 1, minimum: 1}
    """)
    write(root, "actions/show.sh", """
        #!/bin/sh
        # Keep the stdin document aside (the test reads it), then print env and argv.
        cat > "stdin.$ATTUNE_EXECUTION_ID"
        echo "argv: $0 $*"
        env | sort
        echo "cwd: $(pwd)"
    """)
    write(root, "actions/sleepy.yaml", """
        name: sleepy
        runner_type: shell
        entry_point: sleepy.sh
        timeout: 2
        parameters:
          marker: {type: string, required: true}
    """)
    write(root, "actions/sleepy.sh", """
        #!/bin/sh
        eval "$(python3 -c 'import json,sys,shlex; d=json.load(sys.stdin); print("marker="+shlex.quote(d["marker"]))')"
        echo started
        sleep "1000.$marker" &
        sleep "1001.$marker"
    """)
    write(root, "actions/ticker.yaml", """
        name: ticker
        runner_type: python
        entry_point: ticker.py
        output_format: jsonl
        parameters:
          lines: {type: integer, default: 6}
          delay: {type: number, default: 0.3}
    """)
    write(root, "actions/ticker.py", """
        import json, sys, time
        params = json.load(sys.stdin)
        for i in range(params["lines"]):
            print(json.dumps({"line": i}), flush=True)
            time.sleep(params["delay"])
    """)
    write(root, "actions/flood.yaml", """
        name: flood
        runner_type: shell
        entry_point: flood.sh
        parameters:
          mbytes: {type: integer, default: 50}
    """)
    write(root, "actions/flood.sh", """
        #!/bin/sh
        head -c "$(( 50 * 1024 * 1024 ))" /dev/zero | tr '\\0' 'x'
        echo "done" >&2
    """)
    write(root, "actions/badjson.yaml", """
        name: badjson
        runner_type: shell
        entry_point: badjson.sh
        output_format: json
    """)
    write(root, "actions/badjson.sh", "echo 'this is not json'\n")
    write(root, "actions/formats.yaml", """
        name: formats
        runner_type: python
        entry_point: formats.py
        parameter_format: yaml
        output_format: json
        parameters:
          items: {type: array, items: {type: integer}}
          flag: {type: boolean, default: true}
    """)
    write(root, "actions/formats.py", """
        import json, sys
        text = sys.stdin.read()
        print(json.dumps({"raw": text}))
    """)
    write(root, "actions/dotenv.yaml", """
        name: dotenv
        runner_type: shell
        entry_point: dotenv.sh
        parameter_format: dotenv
        output_format: json
        parameters:
          msg: {type: string}
          n: {type: integer}
          obj: {type: object}
    """)
    write(root, "actions/dotenv.sh", """
        eval "$(cat)"
        printf '{"msg": "%s", "n": %s, "obj": %s}\\n' "$msg" "$n" "$obj"
    """)
    write(root, "actions/leaky.yaml", """
        name: leaky
        runner_type: shell
        entry_point: leaky.sh
        parameters:
          token: {type: string, secret: true}
    """)
    write(root, "actions/leaky.sh", """
        #!/bin/sh
        # Prints its secret in two halves, with a pause between, and closes its pipes before exiting.
        token=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
        half=$(( ${#token} / 2 ))
        printf 'token=%s' "$(printf '%s' "$token" | cut -c1-$half)"
        sleep 0.8
        printf '%s done\n' "$(printf '%s' "$token" | cut -c$((half + 1))-)"
        exec >&- 2>&-
        sleep 1
    """)
    register_pack(root)
    return root


def wait_for(execution_id: int, statuses, timeout: float = 30.0) -> Execution:
    statuses = {statuses} if isinstance(statuses, str) else set(statuses)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        execution = Execution.objects.get(pk=execution_id)
        if execution.status in statuses:
            return execution
        time.sleep(0.05)
    raise AssertionError(f"execution {execution_id} is {execution.status}, not {sorted(statuses)} after {timeout}s "
                         f"(result: {str(execution.result)[:500]})")
