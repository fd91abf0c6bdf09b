/* test_identity.c - Ed25519 identities and their files (proto/identity.h):
 * generate/save/load round trip, refusal to overwrite, refusal of a secret
 * key readable by others, and rejection of corrupt or mismatched files
 * (every single-byte change of a key file, chosen at random, is refused). */
#include "identity.h"
#include "test_util.h"

#include <criterion/criterion.h>
#include <fcntl.h>
#include <sodium.h>
#include <string.h>
#include <sys/stat.h>

static char tmp_root[] = "/tmp/nawal_test_identity.XXXXXX";

static void setup(void) { cr_assert(mkdtemp(tmp_root)); }
static void teardown(void) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp_root);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(identity, .init = setup, .fini = teardown);

static void sub(char *out, size_t cap, const char *a, const char *b) {
    snprintf(out, cap, "%s/%s", a, b);
}

static size_t read_all(const char *path, char *buf, size_t cap) {
    FILE *f = fopen(path, "rb");
    cr_assert(f, "open %s", path);
    size_t n = fread(buf, 1, cap, f);
    fclose(f);
    return n;
}

static void write_all(const char *path, const void *buf, size_t len, mode_t mode) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
    cr_assert(fd >= 0, "create %s", path);
    cr_assert_eq(write(fd, buf, len), (ssize_t)len);
    cr_assert_eq(fchmod(fd, mode), 0);
    close(fd);
}

static int load_fails(const char *dir, const char *expect) {
    nawal_identity id;
    memset(&id, 0x77, sizeof id);
    char err[512] = "";
    if (nawal_identity_load(&id, dir, err, sizeof err) == 0) return 0;
    for (size_t i = 0; i < sizeof id.sk; i++) cr_assert_eq(id.sk[i], 0, "secret left behind on failure");
    cr_assert(err[0], "failure without a message");
    if (expect) cr_assert(strstr(err, expect), "message '%s' lacks '%s'", err, expect);
    return 1;
}

Test(identity, save_load_round_trip) {
    char dir[512], pub[600], key[600];
    sub(dir, sizeof dir, tmp_root, "new/nested");
    nawal_identity a, b;
    char err[512] = "";
    cr_assert_eq(nawal_identity_generate(&a, err, sizeof err), 0, "%s", err);
    cr_assert_eq(nawal_identity_save(&a, dir, err, sizeof err), 0, "%s", err);
    sub(key, sizeof key, dir, NAWAL_IDENTITY_KEY_FILE);
    sub(pub, sizeof pub, dir, NAWAL_IDENTITY_PUB_FILE);
    struct stat sb;
    cr_assert_eq(stat(key, &sb), 0);
    cr_assert_eq(sb.st_mode & 0777, 0600, "secret key mode %o", sb.st_mode & 0777);
    cr_assert_eq(stat(dir, &sb), 0);
    cr_assert_eq(sb.st_mode & 077, 0, "key directory mode %o", sb.st_mode & 0777);
    cr_assert_eq(nawal_identity_load(&b, dir, err, sizeof err), 0, "%s", err);
    cr_assert_eq(memcmp(a.pk, b.pk, sizeof a.pk), 0);
    cr_assert_eq(memcmp(a.sk, b.sk, sizeof a.sk), 0);

    /* the loaded key signs what the public key verifies */
    uint8_t msg[100], sig[NAWAL_SIGNATURE_BYTES];
    uint64_t s = test_seed("identity.round_trip");
    for (size_t i = 0; i < sizeof msg; i++) msg[i] = (uint8_t)test_rand_u64(&s);
    cr_assert_eq(crypto_sign_detached(sig, NULL, msg, sizeof msg, b.sk), 0);
    cr_assert_eq(crypto_sign_verify_detached(sig, msg, sizeof msg, a.pk), 0);

    /* fingerprints: identity.pub holds the full one */
    char fp[NAWAL_FINGERPRINT_HEX_BYTES], fps[NAWAL_FINGERPRINT_SHORT_BYTES], text[200] = "";
    nawal_fingerprint(fp, a.pk);
    nawal_fingerprint_short(fps, a.pk);
    cr_assert_eq(strlen(fp), 64);
    cr_assert_eq(strlen(fps), 16);
    cr_assert_eq(strncmp(fp, fps, 16), 0);
    size_t n = read_all(pub, text, sizeof text - 1);
    cr_assert_eq(n, 65);
    cr_assert_eq(text[64], '\n');
    text[64] = 0;
    cr_assert_str_eq(text, fp);
    uint8_t pk[NAWAL_PUBKEY_BYTES];
    cr_assert_eq(nawal_pubkey_from_hex(pk, fp, err, sizeof err), 0);
    cr_assert_eq(memcmp(pk, a.pk, sizeof pk), 0);
    cr_assert_eq(nawal_pubkey_from_hex(pk, fps, err, sizeof err), -1);

    /* the documented format, final newlines optional */
    n = read_all(key, text, sizeof text);
    cr_assert_eq(n, 166);
    cr_assert_eq(memcmp(text, "nawal-ed25519-secret-v1\nseed ", 29), 0);
    cr_assert(strstr(text, "\npublic "));
    write_all(key, text, n - 1, 0600);
    char p2[70];
    memcpy(p2, fp, 64);
    write_all(pub, p2, 64, 0644);
    cr_assert_eq(nawal_identity_load(&b, dir, err, sizeof err), 0, "%s", err);
    cr_assert_eq(memcmp(a.sk, b.sk, sizeof a.sk), 0);

    /* deterministic derivation */
    uint8_t seed[32] = { 1, 2, 3 };
    nawal_identity c, d;
    cr_assert_eq(nawal_identity_from_seed(&c, seed, err, sizeof err), 0);
    cr_assert_eq(nawal_identity_from_seed(&d, seed, err, sizeof err), 0);
    cr_assert_eq(memcmp(&c, &d, sizeof c), 0);
    nawal_identity_wipe(&c);
    for (size_t i = 0; i < sizeof c.sk; i++) cr_assert_eq(c.sk[i], 0);
}

Test(identity, refuses_to_overwrite) {
    nawal_identity a, b, c;
    char err[512] = "", key[600], pub[600];
    cr_assert_eq(nawal_identity_generate(&a, err, sizeof err), 0);
    cr_assert_eq(nawal_identity_generate(&b, err, sizeof err), 0);
    cr_assert_eq(nawal_identity_save(&a, tmp_root, err, sizeof err), 0, "%s", err);
    cr_assert_eq(nawal_identity_save(&b, tmp_root, err, sizeof err), -1);
    cr_assert(strstr(err, "already exists"), "%s", err);
    cr_assert_eq(nawal_identity_load(&c, tmp_root, err, sizeof err), 0, "%s", err);
    cr_assert_eq(memcmp(a.sk, c.sk, sizeof a.sk), 0, "the first key was replaced");

    /* a stray identity.pub alone also blocks saving, and nothing is written */
    sub(key, sizeof key, tmp_root, NAWAL_IDENTITY_KEY_FILE);
    sub(pub, sizeof pub, tmp_root, NAWAL_IDENTITY_PUB_FILE);
    cr_assert_eq(unlink(key), 0);
    cr_assert_eq(nawal_identity_save(&b, tmp_root, err, sizeof err), -1);
    cr_assert(strstr(err, "identity.pub"), "%s", err);
    struct stat sb;
    cr_assert_neq(stat(key, &sb), 0, "secret key written although saving failed");

    /* an inconsistent identity is not saved */
    cr_assert_eq(unlink(pub), 0);
    memcpy(b.pk, a.pk, sizeof b.pk);
    cr_assert_eq(nawal_identity_save(&b, tmp_root, err, sizeof err), -1);
    cr_assert_neq(stat(key, &sb), 0);
}

Test(identity, refuses_open_permissions) {
    nawal_identity a, c;
    char err[512] = "", key[600];
    cr_assert_eq(nawal_identity_generate(&a, err, sizeof err), 0);
    cr_assert_eq(nawal_identity_save(&a, tmp_root, err, sizeof err), 0, "%s", err);
    sub(key, sizeof key, tmp_root, NAWAL_IDENTITY_KEY_FILE);
    cr_assert_eq(chmod(key, 0644), 0);
    cr_assert(load_fails(tmp_root, "permissions 0644 too open; chmod 600"));
    mode_t modes[] = { 0640, 0604, 0620, 0602, 0660 };
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
        cr_assert_eq(chmod(key, modes[i]), 0);
        cr_assert(load_fails(tmp_root, "too open"), "mode %o accepted", modes[i]);
    }
    cr_assert_eq(chmod(key, 0400), 0);
    cr_assert_eq(nawal_identity_load(&c, tmp_root, err, sizeof err), 0, "%s", err);
}

Test(identity, rejects_corrupt_files) {
    uint64_t s = test_seed("identity.corrupt");
    nawal_identity a;
    char err[512] = "", key[600], pub[600], good[200], goodpub[100], buf[400];
    cr_assert_eq(nawal_identity_generate(&a, err, sizeof err), 0);
    cr_assert_eq(nawal_identity_save(&a, tmp_root, err, sizeof err), 0, "%s", err);
    sub(key, sizeof key, tmp_root, NAWAL_IDENTITY_KEY_FILE);
    sub(pub, sizeof pub, tmp_root, NAWAL_IDENTITY_PUB_FILE);
    size_t n = read_all(key, good, sizeof good), np = read_all(pub, goodpub, sizeof goodpub);

    /* every single-byte change of the secret key file is refused */
    for (int trial = 0; trial < 200; trial++) {
        memcpy(buf, good, n);
        size_t at = (size_t)test_rand_int(&s, (int)n);
        uint8_t v;
        do v = (uint8_t)test_rand_u64(&s); while (v == (uint8_t)good[at]);
        /* half the time pick a hex digit, to get past the format check */
        if (trial % 2) {
            do v = (uint8_t)"0123456789abcdef"[test_rand_int(&s, 16)]; while (v == (uint8_t)good[at]);
        }
        buf[at] = (char)v;
        write_all(key, buf, n, 0600);
        cr_assert(load_fails(tmp_root, NULL), "byte %zu changed to 0x%02x accepted", at, v);
    }
    /* truncations, extensions, empty */
    for (size_t cut = 0; cut < n - 1; cut += 1 + (size_t)test_rand_int(&s, 9)) {
        write_all(key, good, cut, 0600);
        cr_assert(load_fails(tmp_root, NULL), "truncated to %zu accepted", cut);
    }
    memcpy(buf, good, n);
    memcpy(buf + n, "extra\n", 6);
    write_all(key, buf, n + 6, 0600);
    cr_assert(load_fails(tmp_root, NULL));
    memset(buf, 'a', 300);
    write_all(key, buf, 300, 0600);
    cr_assert(load_fails(tmp_root, "not a nawal secret key"));
    /* upper-case hex is not the format */
    memcpy(buf, good, n);
    for (size_t i = 29; i < 29 + 64; i++)
        if (buf[i] >= 'a' && buf[i] <= 'f') buf[i] = (char)(buf[i] - 'a' + 'A');
    write_all(key, buf, n, 0600);
    cr_assert(load_fails(tmp_root, "line 2"));
    write_all(key, good, n, 0600);

    /* identity.pub: corrupt, short, missing */
    memcpy(buf, goodpub, np);
    buf[test_rand_int(&s, 64)] = 'x';
    write_all(pub, buf, np, 0644);
    cr_assert(load_fails(tmp_root, "identity.pub"));
    write_all(pub, goodpub, 40, 0644);
    cr_assert(load_fails(tmp_root, "identity.pub"));
    memcpy(buf, goodpub, 64);
    memcpy(buf + 64, "\n\n", 2);
    write_all(pub, buf, 66, 0644);
    cr_assert(load_fails(tmp_root, "identity.pub"));
    unlink(pub);
    cr_assert(load_fails(tmp_root, "identity.pub"));
    write_all(pub, goodpub, np, 0644);
    cr_assert_eq(nawal_identity_load(&a, tmp_root, err, sizeof err), 0, "%s", err);

    /* not a regular file; missing directory */
    cr_assert_eq(unlink(key), 0);
    cr_assert_eq(mkdir(key, 0700), 0);
    cr_assert(load_fails(tmp_root, "identity.key"));
    cr_assert(load_fails("/nonexistent/nawal/keys", "identity.key"));
}

Test(identity, rejects_mismatched_keys) {
    nawal_identity a, b;
    char err[512] = "", da[600], db[600], key_a[700], key_b[700], pub_a[700], pub_b[700];
    char ta[200], tb[200];
    sub(da, sizeof da, tmp_root, "a");
    sub(db, sizeof db, tmp_root, "b");
    cr_assert_eq(nawal_identity_generate(&a, err, sizeof err), 0);
    cr_assert_eq(nawal_identity_generate(&b, err, sizeof err), 0);
    cr_assert_eq(nawal_identity_save(&a, da, err, sizeof err), 0, "%s", err);
    cr_assert_eq(nawal_identity_save(&b, db, err, sizeof err), 0, "%s", err);
    sub(key_a, sizeof key_a, da, NAWAL_IDENTITY_KEY_FILE);
    sub(key_b, sizeof key_b, db, NAWAL_IDENTITY_KEY_FILE);
    sub(pub_a, sizeof pub_a, da, NAWAL_IDENTITY_PUB_FILE);
    sub(pub_b, sizeof pub_b, db, NAWAL_IDENTITY_PUB_FILE);

    /* b's identity.pub next to a's secret key */
    size_t n = read_all(pub_b, tb, sizeof tb);
    read_all(pub_a, ta, sizeof ta);
    write_all(pub_a, tb, n, 0644);
    cr_assert(load_fails(da, "does not match"));
    write_all(pub_a, ta, n, 0644);

    /* a's seed with b's public line (and b's identity.pub): the public line
     * is not the key of the seed */
    n = read_all(key_a, ta, sizeof ta);
    read_all(key_b, tb, sizeof tb);
    const char *pl = strstr(ta, "\npublic ");
    cr_assert(pl);
    size_t off = (size_t)(pl - ta);
    memcpy(ta + off, tb + off, n - off);
    write_all(key_a, ta, n, 0600);
    read_all(pub_b, tb, sizeof tb);
    write_all(pub_a, tb, 65, 0644);
    cr_assert(load_fails(da, "not the key of this seed"));
}
