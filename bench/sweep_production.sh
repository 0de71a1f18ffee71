#!/usr/bin/env bash
# Production-mode configurations tried for docs/performance.md: web tier (gunicorn workers/threads) and
# Celery worker (pool, concurrency, one or two workers). Each line: noop + shell throughput, median of 3.
# ONLY=name1,name2 runs just those configurations.
#   source "$(bash .ci/services.sh state-dir)/env"; bash bench/sweep_production.sh [OUTDIR] [N]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-/tmp/attune-sweep}"
N="${2:-400}"
WAIT="${WAIT_IDLE:-45}"
mkdir -p "$OUT"
run() {
    local name="$1"; shift
    if [ -n "${ONLY:-}" ] && [[ ",$ONLY," != *",$name,"* ]]; then return 0; fi
    echo "=== $name: $*"
    .venv/bin/python bench/bench_executions.py --mode production --tests noop,shell --n "$N" --runs 3 --warmup 50 \
        --wait-idle "$WAIT" --max-seconds 600 --json "$OUT/$name.json" "$@" | grep --line-buffered -E '^production  core|WARNING|aborted' || true
}
run g2-sync_w-threads8        --web-workers 2 --web-threads 1 --worker-pool threads --worker-concurrency 8
run g3-sync_w-threads8        --web-workers 3 --web-threads 1 --worker-pool threads --worker-concurrency 8
run g4-sync_w-threads8        --web-workers 4 --web-threads 1 --worker-pool threads --worker-concurrency 8
run g2-gthread4_w-threads8    --web-workers 2 --web-threads 4 --worker-pool threads --worker-concurrency 8
run g2-sync_w-threads4        --web-workers 2 --web-threads 1 --worker-pool threads --worker-concurrency 4
run g2-sync_w-prefork2        --web-workers 2 --web-threads 1 --worker-pool prefork --worker-concurrency 2
run g2-sync_w-split-threads8  --web-workers 2 --web-threads 1 --worker-pool threads --worker-concurrency 8 --worker-layout split
run uvicorn1_w-threads8       --web uvicorn --worker-pool threads --worker-concurrency 8
run g4-sync_w-prefork2        --web-workers 4 --web-threads 1 --worker-pool prefork --worker-concurrency 2
run g4-sync_w-threads4        --web-workers 4 --web-threads 1 --worker-pool threads --worker-concurrency 4
run g2-sync_w-prefork2_db-reuse --web-workers 2 --web-threads 1 --worker-pool prefork --worker-concurrency 2 --experiments db-reuse
.venv/bin/python - "$OUT" <<'PY'
import json, sys, pathlib, statistics
print(f"\n{'configuration':<32} {'noop/s':>7} {'cap.':>6} {'shell/s':>8} {'cap.':>6}  CPU ms per noop: web/worker/pg/client   others' load")
for f in sorted(pathlib.Path(sys.argv[1]).glob("*.json"), key=lambda p: p.stat().st_mtime):
    try:
        r = json.loads(f.read_text())["results"]["production"]
    except (KeyError, ValueError):
        continue
    def cap(fig):
        caps = []
        for run in fig["runs"]:
            ours = sum(v for k, v in run["cpu_s"].items() if k != "other")
            caps.append(2 * run["n"] / ours)
        return statistics.median(caps)
    noop, shell = r["noop"], r["shell"]
    c = noop["median_run"]["cpu_ms_per_exec"]
    web = sum(v for k, v in c.items() if k == "web")
    worker = sum(v for k, v in c.items() if k.startswith("worker"))
    other = max(x["cpu_s"]["other"] / x["elapsed_s"] for x in noop["runs"] + shell["runs"])
    print(f"{f.stem:<32} {noop['median_exec_per_s']:>7} {cap(noop):>6.1f} {shell['median_exec_per_s']:>8} {cap(shell):>6.1f}  "
          f"{web:5.1f} / {worker:5.1f} / {c['postgres']:5.1f} / {c['client']:4.1f}        up to {other:.2f} cores")
PY
