#!/usr/bin/env bash
# Requests/s and latency of a route behind PaidLayer vs the same route bare, over loopback with
# wrk (Debian package `wrk`). Both routes are measured in the same run, alternating, on the same
# server process. Bounded: DURATION seconds per run, ROUNDS rounds. SERVER=path runs another
# build of the server (e.g. an earlier commit's, to compare in one sitting). Beside req/s, each
# run prints the server process's own CPU per request (user and system, from /proc/PID/stat):
# wrk shares the machine, so req/s alone cannot tell the server's cost from the load's.
# LAYERED=1 also measures /layered, the same handler behind a layer that does nothing.
# ACTORS=n spreads the requests over n payers (agent-1..agent-n, in turn; 1 by default): one
# agent's ledger shared by every core is the hardest case, many agents the common one.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-10}"; ROUNDS="${ROUNDS:-2}"; CONNS="${CONNS:-32}"; PORT="${PORT:-3999}"
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
if [ -z "${SERVER:-}" ]; then
  cargo build --release -p conto-examples --example bench_server >/dev/null 2>&1 \
    || { echo "the server did not build: cargo build --release -p conto-examples --example bench_server" >&2; exit 1; }
  SERVER=target/release/examples/bench_server
fi
ACTORS="${ACTORS:-1}"
[[ "$ACTORS" =~ ^[1-9][0-9]*$ ]] || { echo "ACTORS must be a whole number of payers, 1 or more" >&2; exit 1; }
rounds=$(mktemp); script=$(mktemp --suffix=.lua)
cat >"$script" <<LUA
local i = 0
request = function()
  i = i + 1
  wrk.headers["x-conto-actor"] = "agent-" .. (i % $ACTORS + 1)
  return wrk.format()
end
LUA
# One actor: a fixed header, as every earlier run of this script sent (no script in wrk's loop).
if [ "$ACTORS" = 1 ]; then load=(-H 'x-conto-actor: agent-1'); else load=(-s "$script"); fi
# PIN=1: the server on one worker thread pinned to CPU 0, wrk pinned to CPU 1. Req/s is then the
# server's own throughput on one core, not how the two share the machine with wrk: steadier.
server_cmd=("$SERVER"); client=(); if [ "${PIN:-0}" = 1 ]; then
  command -v taskset >/dev/null || { echo "PIN=1 needs taskset (util-linux)" >&2; exit 1; }
  export TOKIO_WORKER_THREADS=1; server_cmd=(taskset -c 0 "$SERVER"); client=(taskset -c 1)
fi
AGENTS=$ACTORS PORT=$PORT "${server_cmd[@]}" >/dev/null & server=$!
trap 'kill $server 2>/dev/null; rm -f "$rounds" "$script"' EXIT
for _ in $(seq 1 50); do curl -s "http://127.0.0.1:$PORT/bare" >/dev/null && break; sleep 0.1; done
if [ "${LAYERED:-0}" = 1 ] && ! curl -sf "http://127.0.0.1:$PORT/layered" >/dev/null; then
  echo "LAYERED=1: this server has no /layered route (an older bench_server?)" >&2; exit 1
fi
for round in $(seq 1 "$ROUNDS"); do
  # Each round alternates which route goes first, so neither always follows the other.
  # LAYERED=1 adds /layered (a layer that does nothing: axum's own cost of any route layer),
  # always between the other two.
  mid=""; [ "${LAYERED:-0}" = 1 ] && mid=" layered"
  order="bare$mid paid"; [ $((round % 2)) = 0 ] && order="paid$mid bare"
  for route in $order; do
    read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$server/stat")
    out=$("${client[@]}" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "${load[@]}" "http://127.0.0.1:$PORT/$route")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1=="50%" {print $2}' <<<"$out")
    p99=$(awk '$1=="99%" {print $2}' <<<"$out")
    non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
    read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$server/stat")
    n=$(awk '/requests in/ {print $1}' <<<"$out")
    cpu=$(awk -v u="$((u1 - u0))" -v s="$((s1 - s0))" -v n="$n" -v hz="$(getconf CLK_TCK)" \
        'BEGIN {printf "server_user=%.2fus server_sys=%.2fus", u / hz * 1e6 / n, s / hz * 1e6 / n}')
    echo "round=$round route=$route rps=$rps p50=$p50 p99=$p99 non2xx=${non2xx:-0} $cpu"
    echo "$round $route ${rps:-0} ${non2xx:-0} $cpu" >>"$rounds"
  done
done
# One round's paid/bare is as noisy as the machine; the median over rounds is the figure, beside
# the server's own CPU a request (bare over paid: the ratio its req/s would have alone). A round
# with any answer but 2xx (a server that did not provision the payers, say) is left out, loudly.
python3 - "$rounds" <<'PY'
import re, statistics, sys
rows, refused = {}, set()
for line in open(sys.argv[1]):
    m = re.match(r"(\S+) (\S+) (\S+) (\d+) server_user=(\S+)us server_sys=(\S+)us", line)
    if not m:
        continue
    rnd, route, rps, non2xx, user, sys_ = m.groups()
    if int(non2xx) > 0:
        refused.add(rnd)
    rows.setdefault(rnd, {})[route] = (float(rps), float(user) + float(sys_))
pairs = [r for n, r in rows.items() if "bare" in r and "paid" in r and n not in refused and r["bare"][0] > 0]
if refused:
    print("rounds with non-2xx answers, left out: %s" % " ".join(sorted(refused)), file=sys.stderr)
if not pairs:
    sys.exit("summary: no round to summarize")
ratios = sorted(p["paid"][0] / p["bare"][0] for p in pairs)
cpu = sorted(p["bare"][1] / p["paid"][1] for p in pairs)
print("summary rounds=%d paid/bare rps median=%.2f (%s) server cpu bare/paid median=%.2f"
      % (len(pairs), statistics.median(ratios), " ".join("%.2f" % r for r in ratios), statistics.median(cpu)))
layered = [p for p in pairs if "layered" in p and p["layered"][0] > 0]
if layered:
    print("summary layered/bare rps median=%.2f server cpu bare/layered median=%.2f; paid/layered rps median=%.2f"
          % (statistics.median(p["layered"][0] / p["bare"][0] for p in layered),
             statistics.median(p["bare"][1] / p["layered"][1] for p in layered),
             statistics.median(p["paid"][0] / p["layered"][0] for p in layered)))
PY
