#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on loopback for the multi-machine Optuna test and print its URL.
#
#   url=$(.ci/postgres.sh [DATA_DIR] [PORT])   # then: export REPNAS_TEST_POSTGRES="$url"
#   .ci/postgres.sh --stop [DATA_DIR]           # stop it again
#
# Uses Debian's `postgresql` package (installed here when missing and apt-get works). No systemd:
# the cluster is made with initdb and started with pg_ctl as the `postgres` user when run as root
# (PostgreSQL refuses to run as root), with "trust" authentication on 127.0.0.1 only. Exits non-zero
# with one line on stderr when no server can be started; the test then skips with that reason.
set -euo pipefail
stop=0
if [ "${1:-}" = "--stop" ]; then stop=1; shift; fi
data="${1:-/tmp/repnas-ci-postgres}"
port="${2:-54329}"

bindir=""
find_bindir() {
  for dir in /usr/lib/postgresql/*/bin; do
    [ -x "$dir/initdb" ] && bindir="$dir"
  done
  if [ -z "$bindir" ] && command -v initdb >/dev/null 2>&1; then
    bindir="$(dirname "$(command -v initdb)")"
  fi
}
find_bindir
if [ -z "$bindir" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) >&2 \
    || echo "ci: apt-get install postgresql failed" >&2
  find_bindir
fi
if [ -z "$bindir" ]; then
  echo "ci: no PostgreSQL binaries (initdb) found" >&2
  exit 1
fi

as_owner() {  # run a command as the cluster's owner: postgres when we are root, else ourselves
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

if [ "$stop" = 1 ]; then
  [ -f "$data/PG_VERSION" ] && as_owner "$bindir/pg_ctl" -D "$data" -m fast stop >/dev/null 2>&1 || true
  exit 0
fi
if [ ! -f "$data/PG_VERSION" ]; then
  rm -rf "$data"
  mkdir -p "$data"
  [ "$(id -u)" = 0 ] && chown postgres "$data"
  as_owner "$bindir/initdb" -D "$data" -U postgres --auth=trust -E UTF8 >/dev/null
fi
if ! as_owner "$bindir/pg_ctl" -D "$data" status >/dev/null 2>&1; then
  as_owner "$bindir/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $data -c max_connections=200" start >/dev/null
fi
"$bindir/pg_isready" -h 127.0.0.1 -p "$port" -t 30 >/dev/null
echo "postgresql://postgres@127.0.0.1:$port/postgres"
