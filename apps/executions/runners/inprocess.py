"""noop and http run inside the worker: no process start per execution (SPEC §3)."""
from __future__ import annotations

import httpx

from apps.core.statuses import ExecutionStatus

from . import Outcome, RunContext, register


class NoopRunner:
    def run(self, ctx: RunContext) -> Outcome:
        return Outcome(ExecutionStatus.SUCCEEDED, {})


class HttpRunner:
    """``core.http_request``: result ``{status_code, headers, body}``; a 4xx/5xx answer fails the execution."""

    def run(self, ctx: RunContext) -> Outcome:
        p = ctx.parameters
        timeout = min(float(p.get("timeout") or 30), ctx.timeout)
        kwargs = {"headers": p.get("headers") or {}}
        if p.get("json") is not None:
            kwargs["json"] = p["json"]
        elif p.get("body") is not None:
            kwargs["content"] = p["body"]
        try:
            response = httpx.request(p.get("method", "GET"), p["url"], timeout=timeout, follow_redirects=False,
                                     **kwargs)
        except httpx.TimeoutException:
            return Outcome(ExecutionStatus.TIMEOUT, {"error": f"no answer from {p['url']} within {timeout:g} s"})
        except httpx.HTTPError as exc:
            return Outcome(ExecutionStatus.FAILED, {"error": f"request to {p['url']} failed: {exc}"})
        body = response.text
        if "json" in response.headers.get("content-type", ""):
            try:
                body = response.json()
            except ValueError:
                pass
        result = {"status_code": response.status_code, "headers": dict(response.headers), "body": body}
        return Outcome(ExecutionStatus.SUCCEEDED if response.status_code < 400 else ExecutionStatus.FAILED, result)


register("noop", NoopRunner())
register("http", HttpRunner())
