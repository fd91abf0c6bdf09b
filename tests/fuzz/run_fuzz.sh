#!/usr/bin/env bash
# run_fuzz.sh - runs the libFuzzer targets built with -DNAWAL_FUZZ=ON (see
# `make fuzz`), each for a fixed time on a fresh copy of its seed corpus
# (tests/fuzz/corpus/<name>/, never modified), with its dictionary when
# tests/fuzz/<name>.dict exists. Fails when any target finds a crash, a leak,
# a timeout or an out-of-memory; the reproducer is kept under
# BUILD/fuzz-work/<name>/artifacts/ and the log in BUILD/fuzz-work/<name>/log
# until the next run (which starts that folder afresh).
#
# usage: tests/fuzz/run_fuzz.sh BUILD_DIR [SECONDS_EACH [TARGET...]]
#   TARGET: safetensors, tokenizer, corpus, config, envelope, messages, delta, patch, http
#           (default: every one built)
# Reproduce a finding: BUILD_DIR/fuzz/fuzz_<name> ARTIFACT
set -euo pipefail

build=${1:?usage: $0 BUILD_DIR [SECONDS_EACH [TARGET...]]}
each=${2:-15}
shift $(( $# < 2 ? $# : 2 ))
src=$(cd "$(dirname "$0")" && pwd)

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for exe in "$build"/fuzz/fuzz_*; do
    [ -x "$exe" ] && targets+=("$(basename "$exe")")
  done
fi
[ ${#targets[@]} -gt 0 ] || { echo "run_fuzz: no fuzz targets in $build/fuzz (configure with -DNAWAL_FUZZ=ON)" >&2; exit 1; }

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
work=$build/fuzz-work
failed=()
for t in "${targets[@]}"; do
  name=${t#fuzz_}
  exe=$build/fuzz/fuzz_$name
  dir=$work/$name
  rm -rf "$dir"
  mkdir -p "$dir/corpus" "$dir/artifacts"
  cp "$src/corpus/$name"/* "$dir/corpus/"
  seeds=$(ls "$dir/corpus" | wc -l)
  dict=()
  [ -f "$src/$name.dict" ] && dict=("-dict=$src/$name.dict")
  rc=0
  "$exe" -max_total_time="$each" -max_len=65536 -rss_limit_mb=2048 -timeout=30 \
    -print_final_stats=1 -artifact_prefix="$dir/artifacts/" "${dict[@]}" "$dir/corpus" \
    >"$dir/log" 2>&1 || rc=$?
  stat() { sed -n "s/^stat::$1: *//p" "$dir/log" | tail -n 1; }
  runs=$(stat number_of_executed_units); rate=$(stat average_exec_per_sec)
  cov=$(grep -o 'cov: [0-9]*' "$dir/log" | tail -n 1 | cut -d' ' -f2)
  corpus=$(ls "$dir/corpus" | wc -l)
  if [ "$rc" -ne 0 ]; then
    echo "fuzz_$name: FAILED (exit $rc) after ${runs:-?} runs; log $dir/log" >&2
    grep -E '^(==[0-9]+==ERROR|SUMMARY|.*runtime error|.*check failed|artifact_prefix|Test unit written)' "$dir/log" | head -n 20 >&2 || true
    ls "$dir"/artifacts/* 2>/dev/null | sed 's/^/  reproducer: /' >&2 || true
    failed+=("$name")
  else
    echo "fuzz_$name: ok, ${runs:-?} runs in ${each}s (${rate:-?} exec/s), coverage ${cov:-?}, corpus $seeds -> $corpus inputs"
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "run_fuzz: findings in: ${failed[*]}" >&2
  exit 1
fi
