#!/usr/bin/env bash
# Private PostgreSQL + Redis for the production-mode test run.
#
#   .ci/services.sh start    install the servers if missing, start fresh private instances on loopback,
#                            create the role/database, write $ATTUNE_CI_STATE/env (sourceable exports)
#   .ci/services.sh stop     stop both instances and delete the data directory (safe to call any time)
#   .ci/services.sh status   show what is running
#
# Everything lives in $ATTUNE_CI_STATE (default: /tmp/attune-ci-<uid>-<hash of this checkout>), so a
# leftover from an earlier run of the same checkout is found and cleaned up by the next `start`, and
# two checkouts never share a data directory. Ports default to 54329 (PostgreSQL) and 63799 (Redis);
# if one is taken by something that is not ours, the next free port is used instead.
# Nothing listens on anything but 127.0.0.1. No system service is started.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${ATTUNE_CI_STATE:-${TMPDIR:-/tmp}/attune-ci-$(id -u)-$(printf '%s' "$ROOT" | sha256sum | cut -c1-10)}"
PG_PORT_WANTED="${ATTUNE_CI_PG_PORT:-54329}"
REDIS_PORT_WANTED="${ATTUNE_CI_REDIS_PORT:-63799}"
DB_NAME=attune
DB_USER=attune
DB_PASSWORD=attune

PGDATA_DIR="$STATE/pgdata"
PGSOCK_DIR="$STATE/pgsock"
PG_LOG="$STATE/postgresql.log"
REDIS_PID="$STATE/redis.pid"
REDIS_LOG="$STATE/redis.log"
ENV_FILE="$STATE/env"

log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

# --- privileges ------------------------------------------------------------------------------------
if [ "$(id -u)" -eq 0 ]; then SUDO=(); elif command -v sudo >/dev/null 2>&1; then SUDO=(sudo -n); else SUDO=(); fi

# PostgreSQL refuses to run as root: as root, run it as the `postgres` system user (created here if
# the binaries came without one); otherwise run it as ourselves.
PG_OS_USER=""
as_pg() {
    if [ -n "$PG_OS_USER" ]; then
        (cd / && runuser -u "$PG_OS_USER" -- "$@")
    else
        "$@"
    fi
}

# --- finding the binaries --------------------------------------------------------------------------
PGBIN=""
find_pg_bin() {
    # Prefer Debian's versioned directory (highest version first): /usr/bin/pg_ctl* are Perl wrappers
    # (pg_ctlcluster) on Debian, and /usr/local/bin/pg_ctl may be a symlink or a wrapper of some kind.
    local d cand
    for d in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -t/ -k5,5 -rn); do
        if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ]; then PGBIN="$d"; return 0; fi
    done
    if command -v pg_config >/dev/null 2>&1; then
        d="$(pg_config --bindir 2>/dev/null || true)"
        if [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ]; then PGBIN="$d"; return 0; fi
    fi
    if cand="$(command -v pg_ctl 2>/dev/null)"; then
        d="$(dirname "$(readlink -f "$cand")")"
        if [ -x "$d/initdb" ] && [ -x "$d/postgres" ] && "$d/pg_ctl" --version 2>/dev/null | grep -q '(PostgreSQL)'; then
            PGBIN="$d"; return 0
        fi
    fi
    return 1
}

REDIS_SERVER=""
REDIS_CLI=""
find_redis() {
    REDIS_SERVER="$(command -v redis-server 2>/dev/null || true)"
    REDIS_CLI="$(command -v redis-cli 2>/dev/null || true)"
    [ -n "$REDIS_SERVER" ] && [ -n "$REDIS_CLI" ]
}

install_missing() {
    local pkgs=()
    find_pg_bin || pkgs+=(postgresql)
    find_redis || pkgs+=(redis-server redis-tools)
    [ "${#pkgs[@]}" -eq 0 ] && { log "server binaries present: $PGBIN, $REDIS_SERVER"; return 0; }

    command -v apt-get >/dev/null 2>&1 || die "missing ${pkgs[*]} and no apt-get to install them"
    if [ "$(id -u)" -ne 0 ] && [ "${#SUDO[@]}" -eq 0 ]; then die "missing ${pkgs[*]}; need root or sudo to install"; fi
    log "installing ${pkgs[*]} with apt-get (services will not be started)"
    local t0=$SECONDS created_policy=0
    # policy-rc.d exit 101 = "do not start services" for invoke-rc.d / deb-systemd-invoke.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee /usr/sbin/policy-rc.d >/dev/null
        "${SUDO[@]}" chmod 755 /usr/sbin/policy-rc.d
        created_policy=1
    fi
    local rc=0
    {
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${pkgs[@]}" >/dev/null
    } || rc=$?
    [ "$created_policy" -eq 1 ] && "${SUDO[@]}" rm -f /usr/sbin/policy-rc.d
    [ "$rc" -eq 0 ] || die "apt-get install ${pkgs[*]} failed (rc=$rc)"
    log "apt-get install took $((SECONDS - t0))s"
    find_pg_bin || die "PostgreSQL server binaries still not found after install"
    find_redis || die "redis-server / redis-cli still not found after install"
}

setup_pg_user() {
    [ "$(id -u)" -eq 0 ] || { PG_OS_USER=""; return 0; }
    PG_OS_USER="${ATTUNE_CI_PG_OS_USER:-postgres}"
    if ! id -u "$PG_OS_USER" >/dev/null 2>&1; then
        log "creating system user $PG_OS_USER to run PostgreSQL"
        useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$PG_OS_USER"
    fi
}

# --- ports -----------------------------------------------------------------------------------------
port_busy() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }
pick_port() {
    local p="$1" last=$(($1 + 50))
    while [ "$p" -le "$last" ]; do
        port_busy "$p" || { echo "$p"; return 0; }
        p=$((p + 1))
    done
    return 1
}

# --- stop (also used to clean leftovers) -----------------------------------------------------------
pid_alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

stop_services() {
    [ -d "$STATE" ] || return 0
    find_pg_bin || true
    find_redis || true
    setup_pg_user
    local pid
    if [ -f "$PGDATA_DIR/postmaster.pid" ]; then
        pid="$(head -1 "$PGDATA_DIR/postmaster.pid" 2>/dev/null || true)"
        if pid_alive "$pid"; then
            log "stopping PostgreSQL (pid $pid)"
            if [ -n "$PGBIN" ]; then as_pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" stop -m fast -w -t 30 >/dev/null 2>&1 || true; fi
            pid_alive "$pid" && { kill -TERM "$pid" 2>/dev/null || true; sleep 2; }
            if pid_alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
        fi
    fi
    if [ -f "$REDIS_PID" ]; then
        pid="$(cat "$REDIS_PID" 2>/dev/null || true)"
        if pid_alive "$pid" && grep -q redis-server "/proc/$pid/cmdline" 2>/dev/null; then
            log "stopping Redis (pid $pid)"
            local port; port="$(sed -n 's/^REDIS_PORT=//p' "$ENV_FILE" 2>/dev/null || true)"
            if [ -n "$port" ] && [ -n "$REDIS_CLI" ]; then "$REDIS_CLI" -h 127.0.0.1 -p "$port" shutdown nosave >/dev/null 2>&1 || true; fi
            for _ in 1 2 3 4 5 6 7 8 9 10; do pid_alive "$pid" || break; sleep 0.3; done
            pid_alive "$pid" && { kill -TERM "$pid" 2>/dev/null || true; sleep 1; }
            if pid_alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
        fi
    fi
    # Keep the logs for a post-mortem; the data directory goes.
    rm -rf "$PGDATA_DIR" "$PGSOCK_DIR" "$REDIS_PID" "$ENV_FILE"
}

# --- start -----------------------------------------------------------------------------------------
start_postgres() {
    local port="$1"
    mkdir -p "$PGDATA_DIR" "$PGSOCK_DIR"
    chmod 700 "$PGDATA_DIR"
    touch "$PG_LOG"
    if [ -n "$PG_OS_USER" ]; then chown "$PG_OS_USER" "$PGDATA_DIR" "$PGSOCK_DIR" "$PG_LOG"; fi
    log "initdb $PGDATA_DIR ($("$PGBIN/postgres" --version))"
    as_pg "$PGBIN/initdb" -D "$PGDATA_DIR" --username=postgres --auth=trust --encoding=UTF8 --locale=C \
        --no-sync >"$STATE/initdb.log" 2>&1 || { cat "$STATE/initdb.log" >&2; die "initdb failed"; }
    # A throwaway test database: durability off, loopback only, socket in our own directory.
    as_pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -l "$PG_LOG" -w -t 60 start -o \
        "-c listen_addresses=127.0.0.1 -p $port -k $PGSOCK_DIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100" \
        >/dev/null || { tail -n 30 "$PG_LOG" >&2; die "PostgreSQL did not start"; }
    local i
    for i in $(seq 1 60); do
        "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$port" && break
        [ "$i" -eq 60 ] && { tail -n 30 "$PG_LOG" >&2; die "PostgreSQL not accepting connections on 127.0.0.1:$port"; }
        sleep 0.5
    done
    "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres >/dev/null <<SQL
CREATE ROLE $DB_USER LOGIN CREATEDB PASSWORD '$DB_PASSWORD';
CREATE DATABASE $DB_NAME OWNER $DB_USER;
SQL
}

start_redis() {
    local port="$1"
    "$REDIS_SERVER" --bind 127.0.0.1 --port "$port" --protected-mode yes --save '' --appendonly no \
        --daemonize yes --pidfile "$REDIS_PID" --logfile "$REDIS_LOG" --dir "$STATE" \
        || die "redis-server did not start"
    local i
    for i in $(seq 1 60); do
        [ "$("$REDIS_CLI" -h 127.0.0.1 -p "$port" ping 2>/dev/null)" = PONG ] && return 0
        sleep 0.25
    done
    tail -n 30 "$REDIS_LOG" >&2 || true
    die "Redis not answering PING on 127.0.0.1:$port"
}

start_services() {
    local t0=$SECONDS
    install_missing
    setup_pg_user
    stop_services            # a leftover instance / data directory of this checkout
    rm -rf "$STATE"
    mkdir -p "$STATE"
    chmod 755 "$STATE"

    local pg_port redis_port
    pg_port="$(pick_port "$PG_PORT_WANTED")" || die "no free port near $PG_PORT_WANTED"
    redis_port="$(pick_port "$REDIS_PORT_WANTED")" || die "no free port near $REDIS_PORT_WANTED"
    [ "$pg_port" = "$PG_PORT_WANTED" ] || log "port $PG_PORT_WANTED busy, PostgreSQL uses $pg_port"
    [ "$redis_port" = "$REDIS_PORT_WANTED" ] || log "port $REDIS_PORT_WANTED busy, Redis uses $redis_port"

    # Written first so that `stop` can find the Redis port even if a later step fails.
    cat >"$ENV_FILE" <<EOF
PG_PORT=$pg_port
REDIS_PORT=$redis_port
EOF
    start_postgres "$pg_port"
    start_redis "$redis_port"

    local pg_version redis_version
    pg_version="$("$PGBIN/psql" -X -At -h 127.0.0.1 -p "$pg_port" -U "$DB_USER" -d "$DB_NAME" -c 'select version()')"
    redis_version="$("$REDIS_CLI" -h 127.0.0.1 -p "$redis_port" info server | tr -d '\r' | sed -n 's/^redis_version://p')"
    cat >>"$ENV_FILE" <<EOF
export ATTUNE_DATABASE_URL='postgres://$DB_USER:$DB_PASSWORD@127.0.0.1:$pg_port/$DB_NAME'
export ATTUNE_REDIS_URL='redis://127.0.0.1:$redis_port/0'
export ATTUNE_CI_PG_VERSION='$pg_version'
export ATTUNE_CI_REDIS_VERSION='$redis_version'
export ATTUNE_CI_PGBIN='$PGBIN'
export ATTUNE_CI_REDIS_CLI='$REDIS_CLI'
EOF
    log "PostgreSQL: $pg_version"
    log "            listening on 127.0.0.1:$pg_port, database $DB_NAME, role $DB_USER (data $PGDATA_DIR)"
    log "Redis:      $redis_version, listening on 127.0.0.1:$redis_port"
    log "ready in $((SECONDS - t0))s; env in $ENV_FILE"
}

status_services() {
    echo "state dir: $STATE"
    [ -f "$ENV_FILE" ] && cat "$ENV_FILE"
    if [ -f "$PGDATA_DIR/postmaster.pid" ] && pid_alive "$(head -1 "$PGDATA_DIR/postmaster.pid")"; then
        echo "postgresql: running (pid $(head -1 "$PGDATA_DIR/postmaster.pid"))"
    else
        echo "postgresql: stopped"
    fi
    if [ -f "$REDIS_PID" ] && pid_alive "$(cat "$REDIS_PID")"; then echo "redis: running (pid $(cat "$REDIS_PID"))"; else echo "redis: stopped"; fi
}

case "${1:-}" in
    start) start_services ;;
    stop) stop_services ;;
    status) status_services ;;
    state-dir) echo "$STATE" ;;
    *) echo "usage: $0 start|stop|status|state-dir" >&2; exit 2 ;;
esac
