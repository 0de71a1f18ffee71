#!/bin/sh
# Container entry point: bring the database schema up to date, then exec the role given as arguments
# (uvicorn / celery worker / manage.py attune scheduler / celery flower).
#
#   ATTUNE_SETUP=1    run `manage.py attune setup` (migrate + register shipped packs + admin user)
#   ATTUNE_MIGRATE=0  skip migrations (roles that start after the one that migrates, or need no DB)
#   ATTUNE_DB_WAIT    seconds to keep retrying while the database is not reachable yet (default 60)
set -eu

cd /app
wait_s="${ATTUNE_DB_WAIT:-60}"

retry() {
    deadline=$(( $(date +%s) + wait_s ))
    until "$@"; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            echo "entrypoint: '$*' still failing after ${wait_s}s, giving up" >&2
            return 1
        fi
        echo "entrypoint: '$*' failed, retrying in 2s" >&2
        sleep 2
    done
}

if [ "${ATTUNE_SETUP:-0}" = "1" ]; then
    retry python manage.py attune setup
elif [ "${ATTUNE_MIGRATE:-1}" = "1" ]; then
    retry python manage.py migrate --noinput
fi

exec "$@"
