#!/usr/bin/env bash
# cpu_vs_torch.sh - nawal-bench vs PyTorch (bench/compare/torch_cpu.py) on the
# CPU, back to back in one run, for the tiny-Shakespeare config, at 1 and 2
# threads, ROUNDS times; prints every line and the ratio of the medians.
# Gives torch its best chance: OpenBLAS single-threaded under torch's own
# threads (OPENBLAS_NUM_THREADS=1), its own CPU detection and a core type
# forced (Debian's OpenBLAS may mistake these vCPUs for 'Prescott'):
# SkylakeX where the CPU has AVX-512, else Zen on AMD, Haswell on Intel
# (CORETYPE= to choose). IMPL: torch_cpu.py's --impl (default both when
# transformers imports, else plain).
# Needs Debian's python3-torch (+ libopenblas0-pthread for a fair BLAS).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-2}
B=${BUILD:-build}
if [ -z "${CORETYPE+x}" ]; then
  if grep -qw avx512f /proc/cpuinfo; then CORETYPE=SkylakeX
  elif grep -q AuthenticAMD /proc/cpuinfo; then CORETYPE=Zen
  else CORETYPE=Haswell; fi
fi
IMPL=${IMPL:-$(/usr/bin/python3 -c 'import transformers' 2>/dev/null && echo both || echo plain)}
nawal=(); torch=()
for r in $(seq 1 "$ROUNDS"); do
  for th in 1 2; do
    v=$("$B/nawal-bench" train --device cpu --threads "$th" --repeats 5 | awk '/^train_tokens_per_s/{print $2}')
    echo "round $r nawal threads=$th tokens_per_s=$v"; nawal+=("$v")
  done
  for coretype in "" $CORETYPE; do
    out=$(env OPENBLAS_NUM_THREADS=1 ${coretype:+OPENBLAS_CORETYPE=$coretype} /usr/bin/python3 bench/compare/torch_cpu.py \
          --impl "$IMPL" --threads 1,2 --repeats 5 --steps 10 2>&1 | grep '^torch_cpu impl') ||
      { echo "torch_cpu.py (core type ${coretype:-autodetect}, impl $IMPL) printed no result"; exit 1; }
    echo "$out" | sed "s/^/round $r ${coretype:-autodetect} /"
    torch+=($(echo "$out" | sed -n 's/.*tokens_per_s=\([0-9]*\).*/\1/p'))
  done
done
best() { printf '%s\n' "$@" | sort -n | tail -1; }
med() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
tb=$(best "${torch[@]}")
echo "torch best tokens_per_s=$tb; nawal median of all runs at 2 threads:"
n2=$(med $(for i in "${!nawal[@]}"; do [ $((i % 2)) = 1 ] && echo "${nawal[$i]}"; done))
echo "nawal threads=2 tokens_per_s=$n2  ratio_vs_torch_best=$(awk -v a="$n2" -v b="$tb" 'BEGIN{printf "%.2f", a/b}')"
