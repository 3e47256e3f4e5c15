#!/usr/bin/env bash
# Instructions per call under callgrind: two runs per case, 10 000 and 20 000 calls, and the
# difference divided by 10 000, so setup cancels out. Deterministic, unlike timings. Needs
# valgrind. By default: the embedded decision (authorize + record) at 1, 10 and 100 policies,
# the same with a time rule per policy (`decision_days`), then `#[paid_action]` and the layer at 10 policies beside their bare baselines.
#   SIZES="10" MODES="decision layer" benches/instructions.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(cargo bench --bench instructions --no-run --message-format=json 2>/dev/null \
    | grep -o '"executable":"[^"]*instructions-[^"]*"' | tail -1 | cut -d'"' -f4)
out=$(mktemp -d)
count() { # mode policies -> instructions per call
    for n in 10000 20000; do
        MODE=$1 POLICIES=$2 DECISIONS=$n valgrind --tool=callgrind --callgrind-out-file="$out/cg.$n" "$bin" >/dev/null 2>&1
    done
    a=$(grep -m1 '^summary:' "$out/cg.10000" | awk '{print $2}')
    b=$(grep -m1 '^summary:' "$out/cg.20000" | awk '{print $2}')
    echo "mode=$1 policies=$2 instructions_per_call=$(( (b - a) / 10000 ))"
}
for p in ${SIZES:-1 10 100}; do count decision "$p"; count decision_days "$p"; done
for m in ${MODES:-bare_fn paid_action bare_route layer}; do count "$m" 10; done
rm -rf "$out"
