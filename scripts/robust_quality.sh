#!/bin/bash
# robust_quality.sh - the Byzantine-robust aggregation figure: the same
# federation (5 validators, non-IID shards, dense deltas) without an
# attacker under FedAvg and the median, and with one Byzantine validator
# (it sends ATTACK instead of its delta, default -4x its honest delta)
# under FedAvg, median, trimmed mean and Krum; then one table of the final
# global validation losses and how many updates each rule accepted
# (bench/RESULTS.md, "Byzantine-robust aggregation"). A few minutes per run
# on 2 CPU cores; the runs go two at a time.
# Usage: scripts/robust_quality.sh BUILD DATA OUTDIR [ROUNDS STEPS ATTACK]
set -euo pipefail
build=${1:?usage: robust_quality.sh BUILD DATA OUTDIR [ROUNDS STEPS ATTACK]}
data=${2:?corpus (text)}
out=${3:?output directory}
rounds=${4:-40}
steps=${5:-20}
attack=${6:-scale:-4}
mkdir -p "$out"
run() { # name byzantine strategy
    rm -rf "$out/$1"
    "$build/nawal-coordinator" sim --data "$data" --validators 5 --byzantine "$2" --attack "$attack" \
        --rounds "$rounds" --steps "$steps" --batch 8 --model-config 2,4,96,64,257 --topk 1 --strategy "$3" \
        --plaintext --dir "$out/$1" > "$out/$1.log" 2>&1 ||
        { echo "error: run $1 failed; see $out/$1.log" >&2; return 1; }
}
runs="clean-fedavg:0:fedavg clean-median:0:median byz-fedavg:1:fedavg byz-median:1:median byz-trimmed:1:trimmed-mean byz-krum:1:krum:1"
echo "6 federations of $rounds rounds x $steps steps on $data, attack $attack (logs in $out)"
set -- $runs
while [ $# -gt 0 ]; do
    a=$1; shift
    IFS=: read -r n1 b1 s1 <<< "$a"
    run "$n1" "$b1" "$s1" & p1=$!
    if [ $# -gt 0 ]; then
        c=$1; shift
        IFS=: read -r n2 b2 s2 <<< "$c"
        run "$n2" "$b2" "$s2" & p2=$!
        wait $p2
    fi
    wait $p1
done
printf '%-14s %-10s %-14s %10s %10s %12s\n' run byzantine aggregation "val loss" "fed val" "accepted"
for r in $runs; do
    IFS=: read -r name byz strat <<< "$r"
    awk -v n="$name" -v b="$byz" -v a="$strat" -v R="$rounds" '$2 ~ /^[0-9]+\/[0-9]+$/ {
            split($2, p, "/"); acc += p[1]; tot += p[2]; if ($1 == R) { v = $4; f = $5 } }
        END { printf "%-14s %-10s %-14s %10s %10s %12s\n", n, b, a, v, f, acc "/" tot }' "$out/$name.log"
done
