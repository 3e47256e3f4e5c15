#!/usr/bin/env bash
# Requests/s and latency of a route behind PaidLayer vs the same route bare, over loopback with
# wrk (Debian package `wrk`). Both routes are measured in the same run, alternating, on the same
# server process. Bounded: DURATION seconds per run, ROUNDS rounds. SERVER=path runs another
# build of the server (e.g. an earlier commit's, to compare in one sitting). Beside req/s, each
# run prints the server process's own CPU per request (user and system, from /proc/PID/stat):
# wrk shares the machine, so req/s alone cannot tell the server's cost from the load's.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-10}"; ROUNDS="${ROUNDS:-2}"; CONNS="${CONNS:-32}"; PORT="${PORT:-3999}"
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
if [ -z "${SERVER:-}" ]; then
  cargo build --release -p conto-examples --example bench_server >/dev/null 2>&1 \
    || { echo "the server did not build: cargo build --release -p conto-examples --example bench_server" >&2; exit 1; }
  SERVER=target/release/examples/bench_server
fi
PORT=$PORT "$SERVER" >/dev/null & server=$!
trap 'kill $server 2>/dev/null' EXIT
for _ in $(seq 1 50); do curl -s "http://127.0.0.1:$PORT/bare" >/dev/null && break; sleep 0.1; done
for round in $(seq 1 "$ROUNDS"); do
  for route in bare paid; do
    read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$server/stat")
    out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -H 'x-conto-actor: agent-1' "http://127.0.0.1:$PORT/$route")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1=="50%" {print $2}' <<<"$out")
    p99=$(awk '$1=="99%" {print $2}' <<<"$out")
    non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
    read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$server/stat")
    n=$(awk '/requests in/ {print $1}' <<<"$out")
    cpu=$(awk -v u="$((u1 - u0))" -v s="$((s1 - s0))" -v n="$n" -v hz="$(getconf CLK_TCK)" \
        'BEGIN {printf "server_user=%.2fus server_sys=%.2fus", u / hz * 1e6 / n, s / hz * 1e6 / n}')
    echo "round=$round route=$route rps=$rps p50=$p50 p99=$p99 non2xx=${non2xx:-0} $cpu"
  done
done
