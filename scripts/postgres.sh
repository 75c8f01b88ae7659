#!/usr/bin/env bash
# A throw-away PostgreSQL server on loopback for the tests and benchmarks (Debian's packages).
#
#   scripts/postgres.sh start        install postgresql if missing, initdb a cluster in a temp dir, start it on
#                                    127.0.0.1 (a free port); prints the URL as the last line of stdout
#   scripts/postgres.sh stop         stop the cluster `start` made and delete its directory
#   scripts/postgres.sh run CMD...   start, run CMD with the variables below set, stop (even if CMD fails);
#                                    exits with CMD's status. If no server can be started, CMD still runs
#                                    (the PostgreSQL tests then skip and say why)
#
# CMD sees RLHF_WIDGETS_TEST_PG_URL (postgresql://postgres@127.0.0.1:PORT/postgres, trust authentication on
# loopback only), RLHF_WIDGETS_TEST_PG_DATA (the data directory) and RLHF_WIDGETS_TEST_PG_BIN (the directory of
# pg_ctl), so a test can restart the server. The server never runs as root: as root, it runs as Debian's
# `postgres` user. `start`/`stop` keep their state in $RLHF_WIDGETS_PG_STATE (default
# ${TMPDIR:-/tmp}/rlhf-widgets-postgres.$UID); `run` keeps its own, so several runs can overlap.
# RLHF_WIDGETS_PG_NO_INSTALL=1: use installed binaries only, never apt-get (the test fixture sets it).
set -euo pipefail

log() { echo "postgres.sh: $*" >&2; }

find_bin() {
  local dir
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$dir/pg_ctl" ] && [ -x "$dir/initdb" ]; then echo "$dir"; return 0; fi
  done
  return 1
}

install_postgres() {
  if find_bin >/dev/null; then return 0; fi
  if [ -n "${RLHF_WIDGETS_PG_NO_INSTALL:-}" ]; then log "postgresql is not installed"; return 1; fi
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    if sudo -n true 2>/dev/null; then sudo="sudo -n"; else
      log "postgresql is not installed, and installing it needs root or passwordless sudo"; return 1; fi
  fi
  log "installing Debian's postgresql"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq >&2
  $sudo apt-get install -y -qq postgresql >/dev/null
  find_bin >/dev/null
}

# as_server CMD...: run CMD as the (non-root) user that owns the cluster
as_server() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_cluster STATE_FILE: prints the URL; writes "dir port bin" to STATE_FILE
start_cluster() {
  local state=$1 bin dir port
  install_postgres || return 1
  bin=$(find_bin)
  if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
    log "no 'postgres' user to run the server as (the server refuses to run as root)"; return 1; fi
  dir=$(mktemp -d "${TMPDIR:-/tmp}/rlhf-widgets-pg.XXXXXX")
  chmod 700 "$dir"
  [ "$(id -u)" = 0 ] && chown postgres: "$dir"
  port=$(free_port)
  if ! as_server "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C --no-instructions >/dev/null; then
    log "initdb failed"; rm -rf "$dir"; return 1
  fi
  if ! as_server "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null; then
    log "the server did not start; its log:"; tail -n 20 "$dir/server.log" >&2 || true
    rm -rf "$dir"; return 1
  fi
  echo "$dir $port $bin" >"$state"
  echo "postgresql://postgres@127.0.0.1:$port/postgres"
}

# stop_cluster STATE_FILE
stop_cluster() {
  local state=$1 dir port bin
  [ -f "$state" ] || { log "nothing to stop ($state is missing)"; return 0; }
  read -r dir port bin <"$state"
  as_server "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$dir" "$state"
}

STATE=${RLHF_WIDGETS_PG_STATE:-${TMPDIR:-/tmp}/rlhf-widgets-postgres.$(id -u)}
case "${1:-}" in
  start)
    if [ -f "$STATE" ]; then log "already started ($STATE exists); run '$0 stop' first"; exit 1; fi
    start_cluster "$STATE"
    ;;
  stop)
    stop_cluster "$STATE"
    ;;
  run)
    shift
    [ $# -gt 0 ] || { log "usage: $0 run CMD..."; exit 2; }
    state=$(mktemp "${TMPDIR:-/tmp}/rlhf-widgets-pg-state.XXXXXX")
    rm -f "$state"
    trap 'stop_cluster "$state"' EXIT
    if url=$(start_cluster "$state"); then
      read -r dir _ bin <"$state"
      export RLHF_WIDGETS_TEST_PG_URL=$url RLHF_WIDGETS_TEST_PG_DATA=$dir/data RLHF_WIDGETS_TEST_PG_BIN=$bin
      log "PostgreSQL at $url"
    else
      log "no PostgreSQL server: the tests that need one will be skipped"
    fi
    status=0
    "$@" || status=$?
    exit $status
    ;;
  *)
    echo "usage: $0 start | stop | run CMD..." >&2
    exit 2
    ;;
esac
