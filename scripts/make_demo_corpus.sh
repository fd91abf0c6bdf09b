#!/usr/bin/env bash
# make_demo_corpus.sh OUT [BYTES] - writes a synthetic English-like corpus
# (random sentences from a small made-up grammar) for demos and tests on
# machines without a real corpus. Deterministic: same bytes every run.
set -euo pipefail
out=${1:?usage: make_demo_corpus.sh OUT [BYTES]}
bytes=${2:-400000}
awk -v limit="$bytes" 'BEGIN {
  srand(7);
  ns = split("river mountain village captain merchant garden lantern sailor winter harvest", nouns, " ");
  nv = split("carries watches follows remembers builds answers crosses gathers", verbs, " ");
  na = split("quiet golden distant young old bright hidden patient", adjs, " ");
  np = split("near across beyond under beside", preps, " ");
  total = 0;
  while (total < limit) {
    s = "The " adjs[int(rand()*na)+1] " " nouns[int(rand()*ns)+1] " " verbs[int(rand()*nv)+1] " the " nouns[int(rand()*ns)+1];
    if (rand() < 0.5) s = s " " preps[int(rand()*np)+1] " the " adjs[int(rand()*na)+1] " " nouns[int(rand()*ns)+1];
    s = s (rand() < 0.8 ? "." : "!");
    if (rand() < 0.15) s = s "\n";
    else s = s " ";
    printf "%s", s;
    total += length(s);
  }
  printf "\n";
}' > "$out"
echo "wrote $(wc -c < "$out") bytes to $out"
