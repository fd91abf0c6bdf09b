#!/usr/bin/env bash
# coordinator_cli.sh BUILD_DIR - end-to-end checks of nawal-coordinator's
# directory, registry and ledger commands: init layout and refusal of a
# non-empty directory, validator add/list/remove with strict --pubkey and
# --stake parsing, ledger verify/show on a fresh directory, serve's flag
# checks, --help on every command, and exit codes (0 ok, 1 failed
# operation, 2 usage error).
# (Ledger records, tampering and `ledger verify` naming a broken record are
# covered by tests/unit/test_coord_ledger.c, which drives this binary too.)
set -uo pipefail
B=$1
C="$B/nawal-coordinator"
T=$(mktemp -d /tmp/nawal_coord_cli.XXXXXX)
trap 'rm -rf "$T"' EXIT
fail=0
check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; fail=1; fi; }
code() { "$@" >"$T/out" 2>"$T/err"; echo $?; }

D="$T/coord"
check "init exits 0" "[ \$(code $C init --dir $D) -eq 0 ]"
check "init prints the coordinator key" "grep -Eq '^coordinator key [0-9a-f]{64}$' $T/out"
check "init layout" "[ -f $D/state.db ] && [ -d $D/blobs ] && [ -f $D/identity.key ] && [ -f $D/identity.pub ]"
check "secret key is 0600" "[ \$(stat -c %a $D/identity.key) = 600 ]"
check "init of an initialised dir exits 1" "[ \$(code $C init --dir $D) -eq 1 ] && grep -q 'not empty' $T/err"
mkdir "$T/full"; echo x > "$T/full/f"
check "init of a non-empty dir exits 1" "[ \$(code $C init --dir $T/full) -eq 1 ] && [ ! -e $T/full/state.db ]"
check "init without --dir exits 2" "[ \$(code $C init) -eq 2 ] && grep -q -- '--dir is required' $T/err"

check "keygen exits 0 with a fingerprint" "[ \$(code $C keygen --out $T/keys) -eq 0 ] && grep -Eq '^fingerprint [0-9a-f]{64}$' $T/out"
check "keygen secret is 0600" "[ \$(stat -c %a $T/keys/identity.key) = 600 ]"
check "keygen refuses to overwrite" "[ \$(code $C keygen --out $T/keys) -eq 1 ] && grep -q 'refusing to overwrite' $T/err"
fp=$($C keygen --out "$T/keys3" 2>/dev/null)
check "keygen fingerprint is identity.pub" "[ \"$fp\" = \"fingerprint \$(cat $T/keys3/identity.pub)\" ]"

PK1=$(printf 'ab%.0s' $(seq 32)); PK2=$(printf '0%.0s' $(seq 63))1
check "validator add exits 0" "[ \$(code $C validator add --dir $D --pubkey $PK1 --stake 10000000000000000) -eq 0 ]"
check "add prints DALLA" "grep -q '10000.000000000000 DALLA' $T/out"
check "max u64 stake" "[ \$(code $C validator add --dir $D --pubkey $PK2 --stake 18446744073709551615) -eq 0 ]"
check "duplicate add exits 1" "[ \$(code $C validator add --dir $D --pubkey $PK1 --stake 1) -eq 1 ] && grep -q 'already registered' $T/err"
for bad in -1 +1 0x10 1.5 1e3 '' ' 1' 18446744073709551616; do
  check "stake '$bad' is a usage error" "[ \$(code $C validator add --dir $D --pubkey $PK2 --stake '$bad') -eq 2 ]"
done
for bad in abc "${PK1}00" "$(echo $PK1 | tr a-f A-F)" "${PK1:0:63}g"; do
  check "pubkey '${bad:0:12}…' is a usage error" "[ \$(code $C validator add --dir $D --pubkey '$bad' --stake 1) -eq 2 ]"
done
check "unknown flag is a usage error" "[ \$(code $C validator add --dir $D --pubkey $PK1 --stake 1 --bogus 1) -eq 2 ]"
check "missing --stake is a usage error" "[ \$(code $C validator add --dir $D --pubkey $PK1) -eq 2 ]"
check "add to a missing dir exits 1" "[ \$(code $C validator add --dir $T/nope --pubkey $PK1 --stake 1) -eq 1 ] && grep -q 'init' $T/err"

check "list shows both" "[ \$(code $C validator list --dir $D) -eq 0 ] && grep -q $PK1 $T/out && grep -q $PK2 $T/out && grep -q '18446744.073709551615' $T/out && grep -q '^2 validators' $T/out"
check "remove exits 0" "[ \$(code $C validator remove --dir $D --pubkey $PK1) -eq 0 ]"
check "remove again exits 1" "[ \$(code $C validator remove --dir $D --pubkey $PK1) -eq 1 ] && grep -q 'already removed' $T/err"
check "list hides the removed key" "[ \$(code $C validator list --dir $D) -eq 0 ] && ! grep -q $PK1 $T/out && grep -q '^1 validator$' $T/out"
check "list --all shows it removed" "[ \$(code $C validator list --dir $D --all) -eq 0 ] && grep -q \"$PK1.*removed\" $T/out"
check "re-add re-activates" "[ \$(code $C validator add --dir $D --pubkey $PK1 --stake 5) -eq 0 ] && [ \$(code $C validator list --dir $D) -eq 0 ] && grep -q $PK1 $T/out"

check "ledger verify on a fresh dir" "[ \$(code $C ledger verify --dir $D) -eq 0 ] && grep -q '^ledger ok: 0 records$' $T/out"
check "ledger show on a fresh dir" "[ \$(code $C ledger show --dir $D) -eq 0 ] && grep -q '^0 records$' $T/out"
mv "$D/identity.key" "$T/key.saved"
check "ledger verify needs no secret key" "[ \$(code $C ledger verify --dir $D) -eq 0 ]"
check "registry changes do" "[ \$(code $C validator remove --dir $D --pubkey $PK2) -eq 1 ]"
mv "$T/key.saved" "$D/identity.key"

# serve: bad flags are usage errors (2); no TLS material is a failure (1). The
# protocol itself is covered by tests/unit/test_coord_serve.c.
check "serve without --listen exits 2" "[ \$(code $C serve --dir $D) -eq 2 ]"
for bad in nonsense 127.0.0.1 127.0.0.1:65536 127.0.0.1:-1 127.0.0.1:x ::1:80 '[::1]80'; do
  check "serve --listen '$bad' exits 2" "[ \$(code $C serve --dir $D --listen '$bad' --insecure-plaintext) -eq 2 ]"
done
check "serve --insecure-plaintext off loopback exits 2" "[ \$(code $C serve --dir $D --listen 0.0.0.0:0 --insecure-plaintext) -eq 2 ] && grep -q loopback $T/err"
check "serve --log-level loud exits 2" "[ \$(code $C serve --dir $D --listen 127.0.0.1:0 --insecure-plaintext --log-level loud) -eq 2 ]"
check "serve --strategy bogus exits 2 naming the known ones" "[ \$(code $C serve --dir $D --listen 127.0.0.1:0 --insecure-plaintext --strategy bogus) -eq 2 ] && grep -q fedavg-sparse $T/err"
check "round tick --strategy bogus exits 2" "[ \$(code $C round tick --dir $D --strategy bogus) -eq 2 ]"
check "sim --strategy bogus exits 2" "[ \$(code $C sim --data /etc/hostname --strategy bogus) -eq 2 ]"
check "serve --cert without --key exits 2" "[ \$(code $C serve --dir $D --listen 127.0.0.1:0 --cert /etc/hostname) -eq 2 ]"
check "serve without TLS material exits 1" "[ \$(code $C serve --dir $D --listen 127.0.0.1:0) -eq 1 ] && grep -q 'no TLS certificate' $T/err"
check "serve with an unreadable certificate exits 1" "[ \$(code $C serve --dir $D --listen 127.0.0.1:0 --cert $T/none.pem --key $T/none.pem) -eq 1 ]"
check "serve on a missing dir exits 1" "[ \$(code $C serve --dir $T/nope --listen 127.0.0.1:0 --insecure-plaintext) -eq 1 ]"
check "init --tls-cert without --tls-key exits 2" "[ \$(code $C init --dir $T/tls1 --tls-cert /etc/hostname) -eq 2 ] && [ ! -e $T/tls1 ]"
check "init --tls-cert of a missing file exits 2" "[ \$(code $C init --dir $T/tls2 --tls-cert $T/none.pem --tls-key $T/none.pem) -eq 2 ] && [ ! -e $T/tls2 ]"

RS="round start --dir $D --pool-planck 1 --target 1 --min 1 --deadline-s 60"
check "round start --epsilon without --dp exits 2" "[ \$(code $C $RS --epsilon 8) -eq 2 ] && grep -q 'goes with --dp' $T/err"
check "round start --dp without a target exits 2" "[ \$(code $C $RS --dp) -eq 2 ] && grep -q 'epsilon' $T/err"
check "round start --topk 2 exits 2" "[ \$(code $C $RS --topk 2) -eq 2 ]"
check "sim without --data exits 2" "[ \$(code $C sim) -eq 2 ]"

for cmd in "" "init" "validator" "validator add" "validator list" "validator remove" "round" "round start" "round status" "round tick" "ledger" "ledger verify" "ledger show" "serve" "sim"; do
  check "'$cmd --help' exits 0 with usage" "[ \$(code $C $cmd --help) -eq 0 ] && grep -q usage $T/out"
done
check "no command exits 2" "[ \$(code $C) -eq 2 ]"
check "unknown command exits 2" "[ \$(code $C frobnicate) -eq 2 ]"
check "unknown sub-command exits 2" "[ \$(code $C validator frobnicate) -eq 2 ] && [ \$(code $C ledger) -eq 2 ]"

exit $fail
