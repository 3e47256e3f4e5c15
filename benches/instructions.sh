#!/usr/bin/env bash
# Instructions per embedded decision (authorize + record) at 1, 10 and 100 policies, counted by
# callgrind: two runs per size, 10 000 and 20 000 decisions, and the difference divided by
# 10 000, so setup cancels out. Deterministic, unlike timings. Needs valgrind.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(cargo bench --bench instructions --no-run --message-format=json 2>/dev/null \
    | grep -o '"executable":"[^"]*instructions-[^"]*"' | tail -1 | cut -d'"' -f4)
out=$(mktemp -d)
for p in ${SIZES:-1 10 100}; do
    for n in 10000 20000; do
        POLICIES=$p DECISIONS=$n valgrind --tool=callgrind --callgrind-out-file="$out/cg.$p.$n" "$bin" >/dev/null 2>&1
    done
    a=$(grep -m1 '^summary:' "$out/cg.$p.10000" | awk '{print $2}')
    b=$(grep -m1 '^summary:' "$out/cg.$p.20000" | awk '{print $2}')
    echo "policies=$p instructions_per_decision=$(( (b - a) / 10000 ))"
done
rm -rf "$out"
