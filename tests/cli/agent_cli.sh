#!/usr/bin/env bash
# agent_cli.sh BUILD_DIR REPO_DIR - end-to-end checks of nawal-agent's CLI on
# a generated corpus: train lowers the loss and prints val_loss, eval on a
# checkpoint agrees with training's validation loss on the same tokens, BPE
# tokenizer train + use, sample output, and clear errors (exit 2 for usage,
# 1 for bad files) on bad flags, corrupt checkpoints and malformed JSONL;
# keygen; `privacy` (accountant values, noise search round trip, usage errors);
# `train --dp` (epsilon stays within the target, a second run on the same
# signed budget stops before its first step, a tampered budget is refused).
set -uo pipefail
B=$1; R=$2
A="$B/nawal-agent"
T=$(mktemp -d /tmp/nawal_cli.XXXXXX)
trap 'rm -rf "$T"' EXIT
fail=0
check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; fail=1; fi; }

"$R/scripts/make_demo_corpus.sh" "$T/corpus.txt" 60000 >/dev/null
# the validation split of a 60000-byte text is its last 10%: write it alone
n=$(wc -c < "$T/corpus.txt"); nval=$((n / 10))
tail -c "$nval" "$T/corpus.txt" > "$T/val.txt"

"$A" train --data "$T/corpus.txt" --layers 2 --heads 2 --width 32 --context 32 --batch 8 --steps 150 \
     --warmup 10 --log-every 50 --seed 5 --out "$T/ckpt" > "$T/train.log" 2>&1
check "train exits 0" "[ $? -eq 0 ]"
first=$(awk '/^step +1\//{print $4}' "$T/train.log")
last=$(awk '/^step +150\//{print $4}' "$T/train.log")
val=$(awk '/^val_loss/{print $2}' "$T/train.log")
check "train loss falls ($first -> $last)" "awk -v a=$first -v b=$last 'BEGIN{exit !(b < a - 1.0)}'"
check "val_loss printed ($val)" "[ -n '$val' ]"
check "checkpoint files" "[ -f $T/ckpt/model.safetensors ] && [ -f $T/ckpt/config.json ]"

# eval over the validation text alone: the same windows train evaluated
ev=$("$A" eval --checkpoint "$T/ckpt" --data "$T/val.txt" 2>/dev/null | awk '/^loss/{print $2}')
check "eval loss ($ev) equals train's val_loss ($val)" "awk -v a=$ev -v b=$val 'BEGIN{d=a-b; if (d<0) d=-d; exit !(d < 1e-3)}'"

out=$("$A" sample --checkpoint "$T/ckpt" --prompt "The " --tokens 40 --seed 3)
check "sample continues the prompt" "[ \${#out} -ge 30 ] && [ \"\${out:0:4}\" = 'The ' ]"
out2=$("$A" sample --checkpoint "$T/ckpt" --prompt "The " --tokens 40 --seed 3)
check "sample is reproducible for a seed" "[ \"\$out\" = \"\$out2\" ]"

"$A" tokenizer train --data "$T/corpus.txt" --vocab 300 --out "$T/tok.bpe" > "$T/tok.log" 2>&1
check "tokenizer train" "[ $? -eq 0 ] && [ -s $T/tok.bpe ]"
"$A" train --data "$T/corpus.txt" --tokenizer "$T/tok.bpe" --layers 1 --heads 1 --width 16 --context 16 \
     --batch 4 --steps 5 --out "$T/ckpt_bpe" > "$T/train_bpe.log" 2>&1
check "train with BPE tokenizer" "[ $? -eq 0 ] && grep -q 'vocab 300' $T/train_bpe.log && [ -f $T/ckpt_bpe/tokenizer.nawal ]"
"$A" sample --checkpoint "$T/ckpt_bpe" --prompt "The" --tokens 5 > /dev/null 2>&1
check "sample with BPE checkpoint" "[ $? -eq 0 ]"

"$A" train --data "$T/corpus.txt" --dp --noise-multiplier 1 --dp-method sideways > /dev/null 2> "$T/err"
check "train --dp-method unknown is a usage error" "[ $? -eq 2 ] && grep -q 'dp-method sideways' $T/err"
"$A" train --data "$T/corpus.txt" --layers 0 > /dev/null 2> "$T/err"
check "bad flag value exits 2" "[ $? -eq 2 ] && grep -q 'layers' $T/err"
"$A" train --bogus 1 > /dev/null 2>&1
check "unknown flag exits 2" "[ $? -eq 2 ]"
"$A" train --help > /dev/null
check "--help exits 0" "[ $? -eq 0 ]"
"$A" train --data "$T/missing.txt" > /dev/null 2> "$T/err"
check "missing corpus is a clear error" "[ $? -eq 1 ] && grep -q missing.txt $T/err"
printf '{"text": "hello"}\n{"text": 5}\n' > "$T/bad.jsonl"
"$A" train --data "$T/bad.jsonl" --steps 1 > /dev/null 2> "$T/err"
check "malformed JSONL names file:line" "[ $? -eq 1 ] && grep -q 'bad.jsonl:2' $T/err"
cp -r "$T/ckpt" "$T/broken"; head -c 500 "$T/ckpt/model.safetensors" > "$T/broken/model.safetensors"
"$A" eval --checkpoint "$T/broken" --data "$T/val.txt" > /dev/null 2> "$T/err"
check "truncated checkpoint is a clear error" "[ $? -eq 1 ] && grep -q model.safetensors $T/err"
"$A" train --data "$T/corpus.txt" --device cuda --steps 1 > /dev/null 2> "$T/err"
check "--device cuda without the plugin says so" "[ $? -eq 1 ] && grep -qi cuda $T/err"

# keygen: key pair written with a private secret file, fingerprint printed, no overwrite
fp=$("$A" keygen --out "$T/keys/v1" 2>/dev/null | awk '/^fingerprint/{print $2}')
check "keygen prints the fingerprint" "[ \${#fp} -eq 64 ] && [ \"$fp\" = \"\$(cat $T/keys/v1/identity.pub)\" ]"
check "keygen secret key is mode 600" "[ \$(stat -c %a $T/keys/v1/identity.key) = 600 ]"
cp "$T/keys/v1/identity.key" "$T/key.before"
"$A" keygen --out "$T/keys/v1" > /dev/null 2> "$T/err"
check "keygen refuses to overwrite" "[ $? -eq 1 ] && grep -q 'already exists' $T/err && cmp -s $T/key.before $T/keys/v1/identity.key"
"$A" keygen > /dev/null 2>&1
check "keygen without --out exits 2" "[ $? -eq 2 ]"

# privacy: the accountant on the command line. Opacus's own test: sigma 1.5,
# q 0.04, 2250 steps, delta 1e-5 -> epsilon 7.32911117143 (best order 3.9).
P="--sample-rate 0.04 --steps 2250 --delta 1e-5"
"$A" privacy --noise-multiplier 1.5 $P > "$T/priv" 2> "$T/err"
check "privacy exits 0" "[ $? -eq 0 ]"
check "privacy first line is 'epsilon <float>'" "head -1 $T/priv | grep -Eq '^epsilon [0-9.]+$'"
e=$(awk 'NR==1{print $2}' "$T/priv")
check "privacy epsilon ($e) matches Opacus's 7.32911117" "awk -v a=$e 'BEGIN{d=a-7.32911117; if (d<0) d=-d; exit !(d < 1e-6)}'"
check "privacy names the best order" "sed -n 2p $T/priv | grep -q 'order 3.9 '"
s=$("$A" privacy --epsilon 8 $P 2> "$T/err" | awk '/^noise_multiplier /{print $2}')
check "privacy --epsilon prints noise_multiplier ($s)" "[ -n '$s' ]"
e=$("$A" privacy --noise-multiplier "$s" $P 2> "$T/err" | awk 'NR==1{print $2}')
check "that noise multiplier spends epsilon $e, just within 8" "awk -v a=$e 'BEGIN{exit !(a <= 8 && a > 7.999)}'"
"$A" privacy --epsilon 0.05 $P > /dev/null 2> "$T/err"
check "unreachable epsilon is a clear error" "[ $? -eq 1 ] && grep -q unreachable $T/err"
"$A" privacy --help > /dev/null
check "privacy --help exits 0" "[ $? -eq 0 ]"
for bad in "--noise-multiplier 1 --epsilon 2 $P" "$P" "--noise-multiplier 1 --sample-rate 0 --steps 10 --delta 1e-5" \
           "--noise-multiplier 1 --sample-rate 1.5 --steps 10 --delta 1e-5" "--noise-multiplier 1 --sample-rate 0.1 --steps 10 --delta 1" \
           "--noise-multiplier 1 --sample-rate 0.1 --steps 0 --delta 1e-5" "--noise-multiplier 0 $P" "--epsilon -1 $P" \
           "--noise-multiplier x $P" "--noise-multiplier 1 --sample-rate 0.1 --steps 10"; do
    "$A" privacy $bad > /dev/null 2> "$T/err"
    check "privacy $bad exits 2" "[ $? -eq 2 ] && grep -q error $T/err"
done
# DP-SGD training against a signed budget in the key directory
"$A" keygen --out "$T/vkey" > /dev/null 2>&1
DP="--data $T/corpus.txt --layers 1 --heads 2 --width 16 --context 16 --batch 8 --steps 12 --log-every 4 --dp --delta 1e-5 --max-grad-norm 1"
"$A" train $DP --epsilon 20 --key "$T/vkey" > "$T/dp.log" 2>&1
check "train --dp exits 0" "[ $? -eq 0 ] && grep -q '^val_loss' $T/dp.log"
e=$(awk '/^epsilon .* spent/{print $2}' "$T/dp.log")
check "train --dp spends epsilon $e <= 20, recorded in the budget" "awk -v a=$e 'BEGIN{exit !(a > 0 && a <= 20)}' && [ -s $T/vkey/privacy_budget ]"
"$A" train $DP --epsilon "$e" --key "$T/vkey" > "$T/dp2.log" 2>&1
check "a second run on the spent budget stops before step 1" "[ $? -eq 0 ] && grep -q 'stopping before step 1' $T/dp2.log"
printf 'x' | dd of="$T/vkey/privacy_budget" bs=1 seek=40 conv=notrunc 2>/dev/null
"$A" train $DP --epsilon 100 --key "$T/vkey" > /dev/null 2> "$T/err"
check "a tampered budget file is refused" "[ $? -eq 1 ] && grep -q privacy_budget $T/err"
"$A" train --data "$T/corpus.txt" --dp > /dev/null 2> "$T/err"
check "train --dp without --epsilon or --noise-multiplier is an error" "[ $? -ne 0 ] && grep -q epsilon $T/err"
exit $fail
