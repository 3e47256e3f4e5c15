#!/usr/bin/env bash
# Instructions the loopback benchmark's server (examples/bench_server.rs) spends per request,
# under callgrind: N keep-alive requests to /bare, then N to /paid (10 policies, x402 rail),
# counted apart (callgrind_control dumps between them). User space only, deterministic where
# timings are not; the difference is what a paid request costs the server over a bare one.
# Needs valgrind and python3 (the client). SERVER=path measures another build of the server.
#   N=2000 benches/server_instructions.sh
#   ACTORS=64 benches/server_instructions.sh    # the requests spread over 64 payers
set -euo pipefail
cd "$(dirname "$0")/.."
N="${N:-2000}"; PORT="${PORT:-3995}"
command -v valgrind >/dev/null || { echo "valgrind is needed" >&2; exit 1; }
if [ -z "${SERVER:-}" ]; then
  cargo build --release -p conto-examples --example bench_server >/dev/null 2>&1 \
    || { echo "the server did not build: cargo build --release -p conto-examples --example bench_server" >&2; exit 1; }
  SERVER=target/release/examples/bench_server
fi
out=$(mktemp -d)
ACTORS="${ACTORS:-1}"   # requests spread over agent-1..agent-n in turn, as benches/loopback.sh
[[ "$ACTORS" =~ ^[1-9][0-9]*$ ]] || { echo "ACTORS must be a whole number of payers, 1 or more" >&2; exit 1; }
AGENTS=$ACTORS PORT=$PORT valgrind --tool=callgrind --callgrind-out-file="$out/cg" "$SERVER" >/dev/null 2>&1 & server=$!
trap 'kill $server 2>/dev/null; rm -rf "$out"' EXIT
requests() { # route count
  python3 - "$PORT" "$1" "$2" "$ACTORS" <<'PY'
import http.client, sys
port, route, n, actors = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
c = http.client.HTTPConnection("127.0.0.1", port)
for i in range(n):
    c.request("GET", "/" + route, headers={"x-conto-actor": "agent-%d" % (i % actors + 1)})
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
PY
}
for _ in $(seq 1 100); do requests bare 1 2>/dev/null && break; sleep 0.2; done
warm=$(( ACTORS > 200 ? ACTORS : 200 ))         # warm-up: every payer's ledger made before counting
requests bare "$warm"; requests paid "$warm"
callgrind_control -z "$server" >/dev/null 2>&1
requests bare "$N"; callgrind_control -d "$server" >/dev/null 2>&1
requests paid "$N"; callgrind_control -d "$server" >/dev/null 2>&1
sleep 1
bare=$(grep -m1 '^summary' "$out/cg.1" | awk '{print $2}')
paid=$(grep -m1 '^summary' "$out/cg.2" | awk '{print $2}')
# KEEP=dir keeps the two profiles (cg.1 bare, cg.2 paid) for callgrind_annotate.
if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$out"/cg.1 "$out"/cg.2 "$KEEP"/; fi
echo "server instructions per request: bare=$((bare / N)) paid=$((paid / N)) paid-bare=$(((paid - bare) / N))"
