#!/usr/bin/env bash
# The long versions of the reliability proofs (RELIABILITY.md). Bounded: each run stops by
# itself; all traffic stays on 127.0.0.1.
#   scripts/soak.sh            # 50k concurrent actions, 5k actions through a mid-delivery kill
#   ROUNDS=5 scripts/soak.sh   # repeat the fault proofs
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-3}"
export CONTO_OVERSPEND_ACTIONS="${CONTO_OVERSPEND_ACTIONS:-50000}"
export CONTO_REL_ACTIONS="${CONTO_REL_ACTIONS:-5000}"
cargo build --release --tests -p conto-core -p conto-local >/dev/null 2>&1
for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round/$ROUNDS"
  cargo test --release -q -p conto-core --test overspend -- --nocapture 2>&1 | grep -E '^overspend:'
  cargo test --release -q -p conto-local --test reliability -- --nocapture --test-threads=1 2>&1 \
    | grep -oE '(nothing_lost|crash|fail_closed|secrets):.*'
  CONTO_FUZZ_CASES=50000 cargo test --release -q -p conto-local --test fuzz_parser 2>&1 | grep -E 'test result'
done
