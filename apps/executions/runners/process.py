"""shell / python / node: a child process in its own process group (SPEC §3).

- stdin: one parameter document (json / yaml / dotenv), then closed. Secrets travel only this way.
- environment: a minimal one built here (never the worker's own, which may hold database passwords):
  PATH, LANG, HOME, ``ATTUNE_*`` and the pack's interpreter paths.
- stdout / stderr: read incrementally with a size bound per stream; past the bound the bytes are
  counted and dropped (memory stays bounded) and the stream is marked truncated. While the process runs,
  new output is handed to ``on_output`` (for tailing) at most every ``flush_interval`` seconds.
- timeout and cancel: SIGTERM to the process group, SIGKILL after a grace period. When the main process
  ends, whatever it left behind in its group is killed too: no orphaned grandchildren survive.
"""
from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time
from dataclasses import dataclass

from django.conf import settings

from apps.core.processes import kill_group
from apps.core.statuses import ExecutionStatus

from . import Outcome, RunContext, register
from .formats import OutputFormatError, parameter_document, parse_output

READ_SIZE = 65536


@dataclass
class StreamBuffer:
    name: str
    limit: int
    data: bytearray
    size: int = 0  # bytes produced, kept or not
    flushed: int = 0  # bytes already handed to on_output

    @property
    def truncated(self) -> bool:
        return self.size > self.limit

    def feed(self, chunk: bytes) -> None:
        room = self.limit - len(self.data)
        if room > 0:
            self.data += chunk[:room]
        self.size += len(chunk)

    def text(self) -> str:
        return as_text(self.data)


def as_text(data: bytes | bytearray) -> str:
    """Output as text: invalid UTF-8 and NUL bytes (which PostgreSQL's jsonb cannot hold) become U+FFFD."""
    return bytes(data).decode("utf-8", errors="replace").replace("\x00", "\ufffd")




class ProcessRunner:
    def command(self, ctx: RunContext, script: str) -> list[str]:
        raise NotImplementedError

    def run(self, ctx: RunContext) -> Outcome:
        script = ctx.pack_path / "actions" / ctx.entry_point
        if not script.is_file():
            return Outcome(ExecutionStatus.FAILED, {"error": f"entry point actions/{ctx.entry_point} not found in pack "
                                                               f"{ctx.pack_ref} ({ctx.pack_path})"})
        limit = int(settings.ATTUNE_OUTPUT_MAX_BYTES)
        grace = float(settings.ATTUNE_KILL_GRACE_SECONDS)
        stdin_doc = parameter_document(ctx.parameters, ctx.parameter_format)
        try:
            proc = subprocess.Popen(
                self.command(ctx, str(script)),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                cwd=ctx.pack_path, env=ctx.env, start_new_session=True, close_fds=True,
            )
        except OSError as exc:
            return Outcome(ExecutionStatus.FAILED, {"error": f"could not start {script.name}: {exc.strerror or exc}"})
        pgid = proc.pid  # start_new_session: the child leads its own process group
        started = time.monotonic()
        deadline = started + ctx.timeout
        out = StreamBuffer("stdout", limit, bytearray())
        err = StreamBuffer("stderr", limit, bytearray())
        buffers = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        sel.register(proc.stderr, selectors.EVENT_READ)
        os.set_blocking(proc.stdin.fileno(), False)
        sel.register(proc.stdin, selectors.EVENT_WRITE)
        pending_stdin = memoryview(stdin_doc)
        ended_by: str | None = None  # "timeout" | "cancel"
        term_sent_at: float | None = None
        next_check = started + 0.25
        next_flush = started + float(settings.ATTUNE_OUTPUT_FLUSH_SECONDS)
        exited_at: float | None = None

        while sel.get_map() or exited_at is None:
            now = time.monotonic()
            if sel.get_map():
                ready = sel.select(timeout=0.05)
            else:  # pipes closed, exit not reaped yet: wake as soon as it is (not after a fixed 50 ms nap)
                ready = []
                try:
                    proc.wait(timeout=0.05)
                except subprocess.TimeoutExpired:
                    pass
            for key, _ in ready:
                if key.fileobj is proc.stdin:
                    try:
                        written = os.write(proc.stdin.fileno(), pending_stdin[:READ_SIZE])
                        pending_stdin = pending_stdin[written:]
                    except (BrokenPipeError, BlockingIOError) as exc:
                        if isinstance(exc, BlockingIOError):
                            continue
                        pending_stdin = memoryview(b"")
                    if not pending_stdin:
                        sel.unregister(proc.stdin)
                        proc.stdin.close()
                    continue
                chunk = os.read(key.fd, READ_SIZE)
                if chunk:
                    buffers[key.fd].feed(chunk)
                else:
                    sel.unregister(key.fileobj)
            now = time.monotonic()
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None and not sel.get_map():
                break
            if exited_at is not None and now - exited_at > 0.5:
                # The main process is gone but something in its group still holds the pipes open.
                kill_group(pgid, signal.SIGKILL)
                if now - exited_at > 2.0:
                    break
            if ended_by is None and exited_at is None:
                if now >= deadline:
                    ended_by = "timeout"
                elif now >= next_check:
                    if ctx.on_long_running is not None and next_check == started + 0.25:
                        ctx.on_long_running(proc.pid)  # record the pid (group) so a reaper can kill it
                    next_check = now + 0.25
                    if ctx.cancel_requested():
                        ended_by = "cancel"
                if ended_by is not None:
                    kill_group(pgid, signal.SIGTERM)
                    term_sent_at = now
            if term_sent_at is not None and now - term_sent_at >= grace:
                kill_group(pgid, signal.SIGKILL)
                term_sent_at = None
            if ctx.on_output is not None and now >= next_flush:
                next_flush = now + float(settings.ATTUNE_OUTPUT_FLUSH_SECONDS)
                self._flush(ctx, out, err)
        for fileobj in list(sel.get_map().values()):
            sel.unregister(fileobj.fileobj)
        sel.close()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            try:
                pipe.close()
            except OSError:
                pass
        try:
            exit_code = proc.wait(timeout=grace + 5)
        except subprocess.TimeoutExpired:
            kill_group(pgid, signal.SIGKILL)
            exit_code = proc.wait()
        kill_group(pgid, signal.SIGKILL)  # leftovers of the group: no orphans
        if ctx.on_output is not None and (time.monotonic() - started) > float(settings.ATTUNE_OUTPUT_FLUSH_SECONDS):
            self._flush(ctx, out, err)

        stdout, stderr = out.text(), err.text()
        result = {
            "exit_code": exit_code,
            "stdout": stdout,
            "stderr": stderr,
            "data": None,
            "stdout_truncated": out.truncated,
            "stderr_truncated": err.truncated,
        }
        if ended_by == "timeout":
            result["error"] = f"timed out after {ctx.timeout:g} s"
            return Outcome(ExecutionStatus.TIMEOUT, result)
        if ended_by == "cancel":
            result["error"] = "canceled"
            return Outcome(ExecutionStatus.CANCELED, result)
        try:
            result["data"] = parse_output(stdout, ctx.output_format, out.truncated)
        except OutputFormatError as exc:
            result["error"] = str(exc)
            return Outcome(ExecutionStatus.FAILED, result)
        return Outcome(ExecutionStatus.SUCCEEDED if exit_code == 0 else ExecutionStatus.FAILED, result)

    @staticmethod
    def _flush(ctx: RunContext, *streams: StreamBuffer) -> None:
        for buf in streams:
            kept = len(buf.data)
            if kept > buf.flushed:
                ctx.on_output(buf.name, buf.flushed, as_text(buf.data[buf.flushed:kept]))
                buf.flushed = kept


class ShellRunner(ProcessRunner):
    def command(self, ctx: RunContext, script: str) -> list[str]:
        # An executable script with a shebang runs as itself (bash, perl…); anything else through /bin/sh.
        if os.access(script, os.X_OK):
            with open(script, "rb") as fh:
                if fh.read(2) == b"#!":
                    return [script]
        return [ctx.interpreter or "/bin/sh", script]


class PythonRunner(ProcessRunner):
    def command(self, ctx: RunContext, script: str) -> list[str]:
        return [ctx.interpreter, script]


class NodeRunner(ProcessRunner):
    def command(self, ctx: RunContext, script: str) -> list[str]:
        return [ctx.interpreter, script]


register("shell", ShellRunner())
register("python", PythonRunner())
register("node", NodeRunner())
