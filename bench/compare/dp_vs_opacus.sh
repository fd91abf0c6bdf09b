#!/usr/bin/env bash
# dp_vs_opacus.sh - nawal-bench train --dp vs Opacus (bench/compare/opacus_dp.py),
# back to back in one run, same config, same machine, for each thread count in
# THREADS (default "1 2"), ROUNDS times (default 1); prints every figure and the
# ratios nawal DP tokens/s / Opacus tokens/s (issue 4's goal: >= 3x).
#
#   bench/compare/dp_vs_opacus.sh                      # tiny config, CPU
#   bench/compare/dp_vs_opacus.sh --steps 10 --repeats 3   # extra flags go to both
#   PYTHON=/path/to/python3 MODE=both bench/compare/dp_vs_opacus.sh
#   DEVICE=cuda bench/compare/dp_vs_opacus.sh --preset gpt2-small  # one pass, no threads
#
# Env: BUILD (default build), PYTHON (default /usr/bin/python3 on the CPU:
# Debian's torch 1.13 + Opacus 1.4.0, hooks mode only; ghost clipping needs
# torch >= 2 and Opacus >= 1.5, see opacus_dp.py; default python3 with
# DEVICE=cuda), MODE hooks|ghost|both (default both; an unsupported ghost mode
# is reported as skipped), DEVICE cpu|cuda, THREADS, ROUNDS (medians printed
# when > 1).
# OPENBLAS_NUM_THREADS=1 so that torch's threads are the only ones (as
# cpu_vs_torch.sh). Ghost mode runs on an untied LM head (Opacus refuses tied
# weights there): its ratio compares against a slightly larger model.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-1}
B=${BUILD:-build}
MODE=${MODE:-both}
DEVICE=${DEVICE:-cpu}
if [ "$DEVICE" = cuda ]; then PY=${PYTHON:-python3}; else PY=${PYTHON:-/usr/bin/python3}; fi
THREADS=${THREADS:-1 2}
[ "$DEVICE" = cuda ] && THREADS=0
export OPENBLAS_NUM_THREADS=1 PYTHONUNBUFFERED=1
summary=(); pairs=()
for r in $(seq 1 "$ROUNDS"); do
  for th in $THREADS; do
    targ=(); [ "$DEVICE" = cpu ] && targ=(--threads "$th")
    nout=$("$B/nawal-bench" train --device "$DEVICE" --dp "${targ[@]}" "$@" 2>&1) || {
      echo "$nout" | tail -5; echo "nawal-bench train --dp failed (threads=$th)"; exit 1; }
    ndp=$(awk '/^dp_train_tokens_per_s/{print $2}' <<<"$nout")
    nplain=$(awk '/^train_tokens_per_s/{print $2}' <<<"$nout")
    [ -n "$ndp" ] || { echo "$nout" | tail -5; echo "no dp_train_tokens_per_s line from nawal-bench"; exit 1; }
    echo "round $r nawal device=$DEVICE threads=$th dp_tokens_per_s=$ndp plain_tokens_per_s=$nplain"
    oout=$("$PY" bench/compare/opacus_dp.py --device "$DEVICE" --mode "$MODE" "${targ[@]}" "$@" 2>&1) || {
      echo "$oout" | tail -5; echo "opacus_dp.py failed (threads=$th)"; exit 1; }
    ver=$(grep -m1 '^opacus [0-9]' <<<"$oout" | cut -d' ' -f2-4 | sed 's/ (.*//')
    while read -r line; do
      [ -n "$line" ] || continue
      echo "round $r $line"
      m=$(sed -n 's/.* mode=\([a-z]*\).*/\1/p' <<<"$line")
      t=$(sed -n 's/.*tokens_per_s=\([0-9]*\).*/\1/p' <<<"$line")
      h=$(sed -n 's/.* head=\([a-z]*\).*/\1/p' <<<"$line")
      if [ -n "$t" ]; then
        summary+=("round $r threads=$th nawal_dp=$ndp opacus_$m=$t (head $h) ratio=$(awk -v a="$ndp" -v b="$t" 'BEGIN{printf "%.2f", a/b}')x")
        pairs+=("$th $m $ndp $t")
      fi
    done < <(grep -E '^opacus mode=' <<<"$oout")
  done
done
echo
echo "== nawal DP vs Opacus ($DEVICE; opacus $ver; $(date -u '+%Y-%m-%d %H:%M'), HEAD $(git rev-parse --short HEAD 2>/dev/null || echo unknown); $B/nawal-bench of $(date -u -r "$B/nawal-bench" '+%H:%M')) =="
printf '%s\n' "${summary[@]}"
if [ "$ROUNDS" -gt 1 ]; then  # medians over rounds, per thread count and mode
  med() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
  for th in $THREADS; do
    for m in hooks ghost; do
      sel=$(printf '%s\n' "${pairs[@]}" | awk -v th="$th" -v m="$m" '$1==th && $2==m')
      [ -n "$sel" ] || continue
      n=$(awk '{print $3}' <<<"$sel" | med); o=$(awk '{print $4}' <<<"$sel" | med)
      echo "median of $ROUNDS rounds: threads=$th nawal_dp=$n opacus_$m=$o ratio=$(awk -v a="$n" -v b="$o" 'BEGIN{printf "%.2f", a/b}')x"
    done
  done
fi
