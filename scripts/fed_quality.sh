#!/bin/bash
# fed_quality.sh - issue 7's quality figure: the same federation run with
# dense deltas and with 1% top-k deltas (error feedback) under fedavg and
# fedavg-sparse, side by side, then one table of the final global
# validation losses and the bytes each sent (bench/RESULTS.md, "federation
# quality"). About 10 minutes per run alone on 2 CPU cores; the runs go two
# at a time. Usage: scripts/fed_quality.sh BUILD DATA OUTDIR [ROUNDS STEPS]
set -euo pipefail
build=${1:?usage: fed_quality.sh BUILD DATA OUTDIR [ROUNDS STEPS]}
data=${2:?corpus (text)}
out=${3:?output directory}
rounds=${4:-500}
steps=${5:-3}
mkdir -p "$out"
run() { # name topk strategy
    rm -rf "$out/$1"
    "$build/nawal-coordinator" sim --data "$data" --validators 4 --rounds "$rounds" --steps "$steps" --batch 8 \
        --model-config 2,4,96,64,257 --topk "$2" --strategy "$3" --dir "$out/$1" > "$out/$1.log" 2>&1 ||
        { echo "error: run $1 failed; see $out/$1.log" >&2; return 1; }
}
echo "3 federations of $rounds rounds x $steps steps on $data (logs in $out)"
run dense 1 fedavg & p1=$!
run topk-sparse 0.01 fedavg-sparse & p2=$!
wait $p1 && wait $p2
run topk-fedavg 0.01 fedavg
printf '%-12s %-14s %10s %10s %14s\n' deltas aggregation "val loss" "fed val" "bytes up"
for r in dense:fedavg topk-sparse:fedavg-sparse topk-fedavg:fedavg; do
    name=${r%%:*}
    awk -v n="$name" -v a="${r#*:}" -v R="$rounds" '$2 ~ /^[0-9]+\/[0-9]+$/ { up += $7; if ($1 == R) { v = $4; f = $5 } }
        END { printf "%-12s %-14s %10s %10s %14d\n", n, a, v, f, up }' "$out/$name.log"
done
