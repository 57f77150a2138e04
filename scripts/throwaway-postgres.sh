#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the tests that need a real one (the
# shared storage suite on the PostgreSQL engine, the multi-node tests).
#
#   eval "$(scripts/throwaway-postgres.sh start)"   # sets PRECIS_TEST_DATABASE_URL
#   ... cargo test ...
#   scripts/throwaway-postgres.sh stop "$PRECIS_TEST_POSTGRES_DIR"
#
# `start` installs Debian's postgresql package when no server is found,
# runs initdb into a new temporary directory, and starts the server on a
# free port of 127.0.0.1 (trust authentication, reachable from this machine
# only), with TLS offered under a certificate for 127.0.0.1 signed by a CA
# made for the cluster (openssl); it prints the shell lines that name the
# database URL, the CA's certificate and the cluster's directory. `stop DIR` stops that cluster and deletes DIR. The
# server refuses to run as root: as root it runs as the `postgres` user the
# package creates.
set -euo pipefail

bindir() {
  if command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(readlink -f "$(command -v pg_ctl)")"
    return
  fi
  local found
  found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
  if [ -z "$found" ]; then
    echo "::: installing postgresql" >&2
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq >&2 && apt-get install -y -qq postgresql >&2
    else
      sudo apt-get install -y -qq postgresql >&2
    fi
    found=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  fi
  echo "$found"
}

as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "${1:-}" in
  start)
    bin=$(bindir)
    dir=$(mktemp -d /tmp/precis-postgres.XXXXXX)
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    as_owner "$bin/initdb" -D "$dir/data" -U precis --auth=trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 ||
      { cat "$dir/initdb.log" >&2; exit 1; }
    # A CA, and a server certificate for 127.0.0.1 and localhost it signs.
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=precis test CA" \
      -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
      -keyout "$dir/data/server.key" -out "$dir/server.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$dir/san.ext"
    openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
      -days 2 -extfile "$dir/san.ext" -out "$dir/data/server.crt" 2>/dev/null
    chmod 600 "$dir/data/server.key"
    [ "$(id -u)" = 0 ] && chown postgres "$dir/data/server.key" "$dir/data/server.crt"
    chmod 644 "$dir/ca.crt"
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=200 -c fsync=off -c ssl=on" start >&2 ||
      { cat "$dir/server.log" >&2; exit 1; }
    as_owner "$bin/createdb" -h 127.0.0.1 -p "$port" -U precis precis >&2
    echo "export PRECIS_TEST_DATABASE_URL=postgres://precis@127.0.0.1:$port/precis"
    echo "export PRECIS_TEST_POSTGRES_DIR=$dir"
    echo "export PRECIS_TEST_POSTGRES_CA=$dir/ca.crt"
    ;;
  stop)
    dir=${2:?usage: throwaway-postgres.sh stop DIR}
    as_owner "$(bindir)/pg_ctl" -D "$dir/data" -m immediate stop >&2 || true
    rm -rf "$dir"
    ;;
  restart)
    # Used by the tests that restart the database mid-job.
    dir=${2:?usage: throwaway-postgres.sh restart DIR}
    as_owner "$(bindir)/pg_ctl" -D "$dir/data" -l "$dir/server.log" -m fast -w restart >&2
    ;;
  *)
    echo "usage: throwaway-postgres.sh start | stop DIR | restart DIR" >&2
    exit 2
    ;;
esac
