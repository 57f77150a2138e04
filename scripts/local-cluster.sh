#!/usr/bin/env bash
# The clustered set-up on one machine, without a container engine: a
# throwaway PostgreSQL, two api replicas (ports 8081 and 8082) and two
# workers, all `precis serve` processes of this build sharing the database
# (what compose.yaml runs in containers). Stops everything on Ctrl-C.
#
#   cargo build --release
#   scripts/local-cluster.sh [--model ID] [--binary PATH] [-- extra serve flags]
#
# Then post a job to one replica and read it from the other:
#   curl -s localhost:8081/v1/jobs -H 'content-type: application/json' \
#        -d '{"task": "summarize", "items": [{"text": "..."}]}'
#   curl -s localhost:8082/v1/jobs/ID
# and kill a worker (its pid is printed) to watch the other finish its items.
set -euo pipefail
cd "$(dirname "$0")/.."

binary=target/release/precis
model=smollm2-135m-instruct-q4_1
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model=$2; shift 2 ;;
    --binary) binary=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "usage: local-cluster.sh [--model ID] [--binary PATH] [-- serve flags]" >&2; exit 2 ;;
  esac
done
[ -x "$binary" ] || { echo "no $binary: run cargo build --release first" >&2; exit 1; }
extra=("$@")

eval "$(scripts/throwaway-postgres.sh start)"
logs=$(mktemp -d /tmp/precis-cluster.XXXXXX)
pids=()
stop() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  scripts/throwaway-postgres.sh stop "$PRECIS_TEST_POSTGRES_DIR"
  echo "stopped; logs in $logs"
}
trap stop EXIT
trap 'exit 130' INT TERM

export PRECIS_DATABASE_URL=$PRECIS_TEST_DATABASE_URL
start() { # NAME ROLE PORT
  "$binary" serve --model "$model" --role "$2" --addr "127.0.0.1:$3" --job-lease-secs 10 "${extra[@]}" \
    >"$logs/$1.log" 2>&1 &
  pids+=($!)
  echo "$1: --role $2 on 127.0.0.1:$3, pid $!, log $logs/$1.log"
}
start api-1 api 8081
start api-2 api 8082
start worker-1 worker 8083
start worker-2 worker 8084
for port in 8081 8082 8083 8084; do
  until curl -fs "http://127.0.0.1:$port/ready" >/dev/null; do sleep 1; done
done
echo "all ready (database $PRECIS_DATABASE_URL); Ctrl-C stops the cluster"
wait
