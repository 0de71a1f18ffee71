#!/usr/bin/env python
"""Summarise py-spy ``--format raw`` (collapsed stack) files: where a process spent its samples.

    .venv/bin/python bench/pyspy_summary.py /tmp/prof/production-noop-web-*.txt [--top 25] [--match apps/]

Prints, over all the files given together:
* self samples by package of the innermost frame (django.db, rest_framework, celery, kombu, ...);
* inclusive samples of the top functions (a function counted once per stack);
* inclusive samples of every frame whose location contains ``--match`` (default: this project's code).

bench_executions.py --profile DIR writes these files (py-spy record --gil --nonblocking, so samples are
time spent holding the GIL, i.e. Python CPU time of the process).
"""
from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def package(path: str) -> str:
    if "site-packages/" in path:
        parts = path.split("site-packages/", 1)[1].split("/")
        if parts[0] in ("django", "celery", "kombu", "rest_framework") and len(parts) > 2:
            return ".".join(parts[:2])
        return parts[0].removesuffix(".py")
    if "/work/main/" in path or path.startswith(("apps/", "attune/")):
        rel = path.split("/work/main/", 1)[-1]
        return "attune:" + "/".join(rel.split("/")[:2])
    if "/lib/python3" in path:
        return "stdlib:" + path.rsplit("/", 1)[-1].removesuffix(".py")
    return path or "?"


def parse(line: str) -> tuple[list[tuple[str, str]], int] | None:
    line = line.rstrip("\n")
    if not line or " " not in line:
        return None
    stack, _, count = line.rpartition(" ")
    try:
        n = int(count)
    except ValueError:
        return None
    frames = []
    for raw in stack.split(";"):
        m = FRAME.match(raw.strip())
        if m:
            frames.append((m.group("func"), m.group("file")))
        else:
            frames.append((raw.strip(), ""))
    return frames, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--match", default="/work/main/apps/", help="also list inclusive samples of frames in these files")
    args = ap.parse_args()

    total = 0
    self_pkg: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    incl_match: Counter[str] = Counter()
    for name in args.files:
        for line in Path(name).read_text(errors="replace").splitlines():
            parsed = parse(line)
            if parsed is None:
                continue
            frames, n = parsed
            # py-spy prints the thread as the first "frame" (e.g. "process 123:\"python\"" / "thread (0x..)")
            frames = [f for f in frames if f[1]]
            if not frames:
                continue
            total += n
            self_pkg[package(frames[-1][1])] += n
            seen = set()
            for func, file in frames:
                key = f"{func} ({file.split('site-packages/')[-1].split('/work/main/')[-1]})"
                if key not in seen:
                    seen.add(key)
                    incl[key] += n
                    if args.match and args.match in file:
                        incl_match[key] += n
    if not total:
        print("no samples")
        return
    print(f"{total} samples in {len(args.files)} file(s)")
    print("\nself time by package of the innermost frame:")
    for pkg, n in self_pkg.most_common(args.top):
        print(f"  {100 * n / total:5.1f}%  {pkg}")
    print("\ninclusive time, top functions:")
    for key, n in incl.most_common(args.top):
        print(f"  {100 * n / total:5.1f}%  {key}")
    if incl_match:
        print(f"\ninclusive time of frames in {args.match}:")
        for key, n in incl_match.most_common(args.top):
            print(f"  {100 * n / total:5.1f}%  {key}")


if __name__ == "__main__":
    main()
