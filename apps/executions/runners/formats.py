"""Parameter documents on stdin and structured data parsed from stdout (SPEC §3)."""
from __future__ import annotations

import json
import shlex
from typing import Any

import yaml


class OutputFormatError(ValueError):
    pass


def parameter_document(parameters: dict[str, Any], fmt: str) -> bytes:
    if fmt == "yaml":
        return yaml.safe_dump(parameters, sort_keys=True, allow_unicode=True).encode()
    if fmt == "dotenv":
        lines = []
        for name, value in sorted(parameters.items()):
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif value is None:
                text = ""
            elif isinstance(value, str):
                text = value
            else:
                text = json.dumps(value)
            lines.append(f"{name}={shlex.quote(text)}")
        return ("\n".join(lines) + "\n").encode()
    return json.dumps(parameters).encode()


def parse_output(stdout: str, fmt: str, truncated: bool) -> Any:
    """``result.data`` for an output format; raises OutputFormatError saying what is wrong."""
    if fmt == "text":
        return None
    if truncated:
        raise OutputFormatError(f"stdout was truncated, so it cannot be parsed as {fmt}")
    try:
        if fmt == "json":
            return json.loads(stdout)
        if fmt == "yaml":
            return yaml.safe_load(stdout)
        if fmt == "jsonl":
            items = []
            for number, line in enumerate(stdout.splitlines(), 1):
                if line.strip():
                    try:
                        items.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise OutputFormatError(f"stdout line {number} is not JSON: {exc.msg}") from None
            return items
    except json.JSONDecodeError as exc:
        raise OutputFormatError(
            f"stdout is not valid JSON (output_format: json): {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except yaml.YAMLError as exc:
        raise OutputFormatError(f"stdout is not valid YAML (output_format: yaml): {exc}") from None
    raise OutputFormatError(f"unknown output_format {fmt!r}")
