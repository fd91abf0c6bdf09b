/* privacy_budget.c - see privacy_budget.h. The state and marker files are
 * built as text, sealed with a last line (Ed25519 signature or BLAKE2b-256
 * checksum over the bytes before it), and judged in the reverse order on
 * load: seal first, so that no byte of an unverified file is interpreted,
 * then strict parsing. */
#include "privacy_budget.h"
#include "cid.h"
#include "error.h"
#include "fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define STATE_MAGIC "nawal-privacy-budget-v1"
#define MARKER_MAGIC "nawal-privacy-budget-started-v1"
#define SIG_PREFIX "signature "
#define SUM_PREFIX "checksum "
/* Largest file we read: the header and NAWAL_RDP_MAX_ORDERS "rdp" lines of
 * at most 4 + 2 x 24 + 2 bytes each fit with room to spare. */
#define BUDGET_MAX_BYTES 65536
#define FILE_MODE 0600

struct nawal_privacy_budget {
    char path[PATH_MAX], marker[PATH_MAX];
    const nawal_identity *id;
    int lock_fd;
    uint8_t bid[NAWAL_BUDGET_ID_BYTES];
    uint64_t counter, steps;
    double delta;
    nawal_accountant acc;
};

/* What a state or marker file says (after its seal verified). */
typedef struct {
    uint8_t bid[NAWAL_BUDGET_ID_BYTES];
    int has_validator;
    uint8_t validator[NAWAL_PUBKEY_BYTES];
    uint64_t counter, steps;
    double delta, eps;
    nawal_accountant acc;
} budget_record;

/* ---- text building -------------------------------------------------- */

typedef struct {
    char *p;
    size_t len, cap;
    int overflow;
} text_buf;

static void put(text_buf *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(text_buf *t, const char *fmt, ...) {
    if (t->overflow) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(t->p + t->len, t->cap - t->len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= t->cap - t->len) t->overflow = 1;
    else t->len += (size_t)n;
}

static void put_hex(text_buf *t, const char *key, const uint8_t *bin, size_t n) {
    char hex[2 * NAWAL_SIGNATURE_BYTES + 1];
    nawal_hex_encode(hex, bin, n);
    put(t, "%s%s\n", key, hex);
}

/* The shortest of %.15g..%.17g that reads back as exactly x. */
static const char *fmt_double(char buf[32], double x) {
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, 32, "%.*g", prec, x);
        if (strtod(buf, NULL) == x) break;
    }
    return buf;
}

static void put_validator(text_buf *t, const nawal_identity *id) {
    if (id) put_hex(t, "validator ", id->pk, NAWAL_PUBKEY_BYTES);
    else put(t, "validator none\n");
}

/* Appends the seal line over t->p[0..t->len). */
static int seal(text_buf *t, const nawal_identity *id, char *err, size_t errlen) {
    if (nawal_crypto_init()) return nawal_fail(err, errlen, "libsodium failed to initialise");
    if (id) {
        uint8_t sig[NAWAL_SIGNATURE_BYTES];
        if (crypto_sign_detached(sig, NULL, (const unsigned char *)t->p, t->len, id->sk))
            return nawal_fail(err, errlen, "signing the privacy budget failed");
        put_hex(t, SIG_PREFIX, sig, sizeof sig);
    } else {
        uint8_t sum[NAWAL_CID_BYTES];
        if (nawal_cid_of_buffer(sum, t->p, t->len)) return nawal_fail(err, errlen, "hashing the privacy budget failed");
        put_hex(t, SUM_PREFIX, sum, sizeof sum);
    }
    return t->overflow ? nawal_fail(err, errlen, "privacy budget text too long") : 0;
}

/* ---- reading and judging -------------------------------------------- */

/* Reads the whole regular file at path (at most BUDGET_MAX_BYTES) into a
 * malloc'ed, NUL-terminated buffer. *missing is set (and -1 returned with
 * no message) when the file does not exist. */
static int read_file(const char *path, char **out, size_t *len, int *missing, char *err, size_t errlen) {
    *missing = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        if (errno == ENOENT) { *missing = 1; return -1; }
        return nawal_fail(err, errlen, "%s: cannot open: %s", path, strerror(errno));
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return nawal_fail(err, errlen, "%s: not a regular file", path);
    }
    if (sb.st_size > BUDGET_MAX_BYTES) {
        close(fd);
        return nawal_fail(err, errlen, "%s: %lld bytes, too large for a privacy budget file (corrupt?)", path,
                          (long long)sb.st_size);
    }
    char *buf = malloc(BUDGET_MAX_BYTES + 1);
    if (!buf) {
        close(fd);
        return nawal_fail(err, errlen, "%s: out of memory", path);
    }
    size_t got = 0;
    for (;;) {
        ssize_t n = read(fd, buf + got, BUDGET_MAX_BYTES + 1 - got);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            int e = errno;
            close(fd);
            free(buf);
            return nawal_fail(err, errlen, "%s: read failed: %s", path, strerror(e));
        }
        if (n == 0 || (got += (size_t)n) > BUDGET_MAX_BYTES) break;
    }
    close(fd);
    if (got > BUDGET_MAX_BYTES) {
        free(buf);
        return nawal_fail(err, errlen, "%s: too large for a privacy budget file (corrupt?)", path);
    }
    buf[got] = 0;
    *out = buf;
    *len = got;
    return 0;
}

/* Splits text into body + seal line and checks the seal against `id` (or
 * the checksum when id is NULL). On success *body_len is the length of the
 * sealed part. */
static int verify_seal(const char *path, const char *text, size_t len, const nawal_identity *id, size_t *body_len,
                       char *err, size_t errlen) {
    if (len == 0) return nawal_fail(err, errlen, "%s: empty file (truncated?)", path);
    if (text[len - 1] != '\n') return nawal_fail(err, errlen, "%s: does not end with a newline (truncated?)", path);
    if (memchr(text, 0, len)) return nawal_fail(err, errlen, "%s: contains a NUL byte (corrupt)", path);
    size_t start = len - 1;
    while (start > 0 && text[start - 1] != '\n') start--;
    const char *line = text + start;
    size_t llen = len - 1 - start;
    int is_sig = llen > sizeof SIG_PREFIX - 1 && memcmp(line, SIG_PREFIX, sizeof SIG_PREFIX - 1) == 0;
    int is_sum = llen > sizeof SUM_PREFIX - 1 && memcmp(line, SUM_PREFIX, sizeof SUM_PREFIX - 1) == 0;
    if (!is_sig && !is_sum)
        return nawal_fail(err, errlen,
                          "%s: last line must be 'signature <hex>' or 'checksum <hex>' (truncated or corrupt)", path);
    if (is_sig && !id)
        return nawal_fail(err, errlen, "%s: is signed with a validator key; open it with that key (--keys)", path);
    if (is_sum && id)
        return nawal_fail(err, errlen, "%s: has a checksum, not a signature: it was started without a validator key",
                          path);
    if (nawal_crypto_init()) return nawal_fail(err, errlen, "libsodium failed to initialise");
    if (is_sig) {
        uint8_t sig[NAWAL_SIGNATURE_BYTES];
        if (nawal_hex_decode(sig, sizeof sig, line + sizeof SIG_PREFIX - 1, llen - (sizeof SIG_PREFIX - 1)))
            return nawal_fail(err, errlen, "%s: signature line is not %d lowercase hex characters (corrupt)", path,
                              2 * NAWAL_SIGNATURE_BYTES);
        if (crypto_sign_verify_detached(sig, (const unsigned char *)text, start, id->pk) != 0) {
            char fp[NAWAL_FINGERPRINT_SHORT_BYTES];
            nawal_fingerprint_short(fp, id->pk);
            return nawal_fail(err, errlen,
                              "%s: signature does not verify with validator %s's key: the file was changed, or "
                              "belongs to another validator",
                              path, fp);
        }
    } else {
        uint8_t want[NAWAL_CID_BYTES], got[NAWAL_CID_BYTES];
        if (nawal_hex_decode(want, sizeof want, line + sizeof SUM_PREFIX - 1, llen - (sizeof SUM_PREFIX - 1)))
            return nawal_fail(err, errlen, "%s: checksum line is not %d lowercase hex characters (corrupt)", path,
                              2 * NAWAL_CID_BYTES);
        if (nawal_cid_of_buffer(got, text, start) || !nawal_cid_equal(want, got))
            return nawal_fail(err, errlen, "%s: checksum mismatch: the file is corrupted or was edited", path);
    }
    *body_len = start;
    return 0;
}

/* Line cursor over a verified body. */
typedef struct {
    const char *path;
    char *p, *end;
    int lineno;
    char *err;
    size_t errlen;
} cursor;

/* The next line, NUL-terminated in place, which must start with `key`;
 * returns what follows the key, or NULL after setting the error. */
static char *expect(cursor *c, const char *key) {
    c->lineno++;
    char *nl = c->p < c->end ? memchr(c->p, '\n', (size_t)(c->end - c->p)) : NULL;
    size_t klen = strlen(key);
    if (!nl || (size_t)(nl - c->p) < klen || memcmp(c->p, key, klen) != 0) {
        nawal_fail(c->err, c->errlen, "%s:%d: expected '%s...'", c->path, c->lineno, key);
        return NULL;
    }
    *nl = 0;
    char *v = c->p + klen;
    c->p = nl + 1;
    return v;
}

static int bad_value(cursor *c, const char *what, const char *v) {
    return nawal_fail(c->err, c->errlen, "%s:%d: invalid %s '%s'", c->path, c->lineno, what, v);
}

static int parse_u64(cursor *c, const char *key, uint64_t *out) {
    char *v = expect(c, key);
    if (!v) return -1;
    if (!*v || strspn(v, "0123456789") != strlen(v) || (v[0] == '0' && v[1])) return bad_value(c, key, v);
    errno = 0;
    unsigned long long x = strtoull(v, NULL, 10);
    if (errno) return bad_value(c, key, v);
    *out = x;
    return 0;
}

static int parse_double_str(cursor *c, const char *what, const char *v, double *out) {
    char *e;
    errno = 0;
    double x = strtod(v, &e);
    if (!*v || *e || errno || isnan(x)) return bad_value(c, what, v);
    *out = x;
    return 0;
}

static int parse_double(cursor *c, const char *key, double *out) {
    char *v = expect(c, key);
    return v ? parse_double_str(c, key, v, out) : -1;
}

static int parse_hex(cursor *c, const char *key, uint8_t *bin, size_t n) {
    char *v = expect(c, key);
    if (!v) return -1;
    if (nawal_hex_decode(bin, n, v, strlen(v))) return bad_value(c, key, v);
    return 0;
}

static int parse_validator(cursor *c, budget_record *r) {
    char *v = expect(c, "validator ");
    if (!v) return -1;
    if (!strcmp(v, "none")) { r->has_validator = 0; return 0; }
    if (nawal_hex_decode(r->validator, NAWAL_PUBKEY_BYTES, v, strlen(v))) return bad_value(c, "validator", v);
    r->has_validator = 1;
    return 0;
}

/* Reads, verifies and parses a state (marker == 0) or marker file. */
static int load_file(const char *path, int marker, const nawal_identity *id, budget_record *r, int *missing,
                     char *err, size_t errlen) {
    char *text = NULL;
    size_t len = 0, body = 0;
    if (read_file(path, &text, &len, missing, err, errlen)) return -1;
    memset(r, 0, sizeof *r);
    int rc = -1;
    if (verify_seal(path, text, len, id, &body, err, errlen)) goto out;
    cursor c = {path, text, text + body, 0, err, errlen};
    char *v = expect(&c, marker ? MARKER_MAGIC : STATE_MAGIC);
    if (!v) goto out;
    if (*v) { bad_value(&c, "first line", v); goto out; }
    if (parse_hex(&c, "budget ", r->bid, sizeof r->bid) || parse_validator(&c, r)) goto out;
    if (!marker) {
        uint64_t n;
        double orders[NAWAL_RDP_MAX_ORDERS], rdp[NAWAL_RDP_MAX_ORDERS];
        if (parse_u64(&c, "counter ", &r->counter) || parse_double(&c, "delta ", &r->delta) ||
            parse_u64(&c, "steps ", &r->steps) || parse_double(&c, "epsilon ", &r->eps) || parse_u64(&c, "orders ", &n))
            goto out;
        if (n == 0 || n > NAWAL_RDP_MAX_ORDERS) {
            nawal_fail(err, errlen, "%s:%d: %llu orders, need 1 to %d", path, c.lineno, (unsigned long long)n,
                       NAWAL_RDP_MAX_ORDERS);
            goto out;
        }
        for (size_t k = 0; k < n; k++) {
            char *line = expect(&c, "rdp "), *sp = line ? strchr(line, ' ') : NULL;
            if (!sp) {
                if (line) bad_value(&c, "rdp line", line);
                goto out;
            }
            *sp = 0;
            if (parse_double_str(&c, "order", line, &orders[k]) || parse_double_str(&c, "rdp", sp + 1, &rdp[k]))
                goto out;
            if (!(rdp[k] >= 0.0)) { bad_value(&c, "rdp", sp + 1); goto out; }
        }
        char msg[256];
        if (nawal_accountant_init(&r->acc, orders, (size_t)n, msg, sizeof msg)) {
            nawal_fail(err, errlen, "%s: %s", path, msg);
            goto out;
        }
        memcpy(r->acc.rdp, rdp, (size_t)n * sizeof rdp[0]);
    }
    if (c.p != c.end) {
        nawal_fail(err, errlen, "%s:%d: unexpected extra line", path, c.lineno + 1);
        goto out;
    }
    rc = 0;
out:
    free(text);
    return rc;
}

/* ---- writing -------------------------------------------------------- */

static int write_sealed(const char *path, text_buf *t, const nawal_identity *id, char *err, size_t errlen) {
    if (seal(t, id, err, errlen)) return -1;
    nawal_chunk ch = {t->p, t->len};
    return nawal_file_replace(path, &ch, 1, FILE_MODE, err, errlen);
}

/* Writes the state file for b's id/delta with the given counter, steps and
 * accountant; b itself is not changed. */
static int write_state(const nawal_privacy_budget *b, uint64_t counter, uint64_t steps, const nawal_accountant *acc,
                       char *err, size_t errlen) {
    double eps;
    char msg[256];
    if (nawal_accountant_epsilon(acc, b->delta, &eps, NULL, msg, sizeof msg))
        return nawal_fail(err, errlen, "%s: %s", b->path, msg);
    text_buf t = {malloc(BUDGET_MAX_BYTES), 0, BUDGET_MAX_BYTES, 0};
    if (!t.p) return nawal_fail(err, errlen, "%s: out of memory", b->path);
    put(&t, "%s\n", STATE_MAGIC);
    put_hex(&t, "budget ", b->bid, sizeof b->bid);
    put_validator(&t, b->id);
    char d1[32], d2[32];
    put(&t, "counter %llu\ndelta %s\nsteps %llu\nepsilon %s\norders %zu\n", (unsigned long long)counter,
        fmt_double(d1, b->delta), (unsigned long long)steps, fmt_double(d2, eps), acc->n);
    for (size_t k = 0; k < acc->n; k++)
        put(&t, "rdp %s %s\n", fmt_double(d1, acc->orders[k]), fmt_double(d2, acc->rdp[k]));
    int rc = write_sealed(b->path, &t, b->id, err, errlen);
    free(t.p);
    return rc;
}

static int write_marker(const nawal_privacy_budget *b, char *err, size_t errlen) {
    char buf[512];
    text_buf t = {buf, 0, sizeof buf, 0};
    put(&t, "%s\n", MARKER_MAGIC);
    put_hex(&t, "budget ", b->bid, sizeof b->bid);
    put_validator(&t, b->id);
    return write_sealed(b->marker, &t, b->id, err, errlen);
}

/* ---- the handle ----------------------------------------------------- */

static int join(char *out, const char *dir, const char *name, char *err, size_t errlen) {
    int n = snprintf(out, PATH_MAX, "%s/%s", dir, name);
    if (n < 0 || n >= PATH_MAX) return nawal_fail(err, errlen, "%s: path too long", dir);
    return 0;
}

static int lock_budget(nawal_privacy_budget *b, const char *dir, char *err, size_t errlen) {
    char lock[PATH_MAX];
    if (join(lock, dir, NAWAL_BUDGET_LOCK_FILE, err, errlen)) return -1;
    b->lock_fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, FILE_MODE);
    if (b->lock_fd < 0) return nawal_fail(err, errlen, "%s: cannot open: %s", lock, strerror(errno));
    if (flock(b->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        return nawal_fail(err, errlen, "%s: %s", lock,
                          e == EWOULDBLOCK ? "the privacy budget is in use by another process" : strerror(e));
    }
    return 0;
}

int nawal_privacy_budget_open(nawal_privacy_budget **out, const char *dir, const nawal_identity *id, double delta,
                              int create, char *err, size_t errlen) {
    *out = NULL;
    if (!(delta > 0.0 && delta < 1.0)) return nawal_fail(err, errlen, "delta %g is outside (0, 1)", delta);
    nawal_privacy_budget *b = calloc(1, sizeof *b);
    if (!b) return nawal_fail(err, errlen, "out of memory");
    b->lock_fd = -1;
    b->id = id;
    b->delta = delta;
    budget_record st, mk;
    int st_missing = 0, mk_missing = 0;
    if (join(b->path, dir, NAWAL_BUDGET_FILE, err, errlen) ||
        join(b->marker, dir, NAWAL_BUDGET_MARKER_FILE, err, errlen) || lock_budget(b, dir, err, errlen))
        goto fail;
    if (load_file(b->path, 0, id, &st, &st_missing, err, errlen) && !st_missing) goto fail;
    if (load_file(b->marker, 1, id, &mk, &mk_missing, err, errlen) && !mk_missing) goto fail;

    if (st_missing && !mk_missing)
        goto missing;
    if (st_missing) { /* neither file: a new budget */
        if (!create) {
            nawal_fail(err, errlen, "%s: no privacy budget here", b->path);
            goto fail;
        }
        if (nawal_crypto_init()) {
            nawal_fail(err, errlen, "libsodium failed to initialise");
            goto fail;
        }
        randombytes_buf(b->bid, sizeof b->bid);
        nawal_accountant_init(&b->acc, NULL, 0, NULL, 0);
        if (write_state(b, 0, 0, &b->acc, err, errlen) || write_marker(b, err, errlen)) goto fail;
        *out = b;
        return 0;
    }
    /* The seal verified with id's key, so a signed file names id; a file
     * naming another key under a valid seal means the seal was forged. */
    if (st.has_validator != (id != NULL) || (id && memcmp(st.validator, id->pk, NAWAL_PUBKEY_BYTES) != 0)) {
        nawal_fail(err, errlen, "%s: names a different validator than the key that signed it", b->path);
        goto fail;
    }
    if (st.delta != delta) {
        nawal_fail(err, errlen, "%s: this budget reports epsilon at delta %.17g, not %.17g", b->path, st.delta, delta);
        goto fail;
    }
    double eps;
    if (nawal_accountant_epsilon(&st.acc, delta, &eps, NULL, err, errlen)) goto fail;
    if (!(eps == st.eps || fabs(eps - st.eps) <= 1e-9 * fmax(1.0, fabs(eps)))) {
        nawal_fail(err, errlen, "%s: recorded epsilon %.17g does not match its RDP values (%.17g)", b->path, st.eps,
                   eps);
        goto fail;
    }
    memcpy(b->bid, st.bid, sizeof b->bid);
    b->counter = st.counter;
    b->steps = st.steps;
    b->acc = st.acc;
    if (mk_missing) { /* the marker is written after the first state: restore it */
        if (write_marker(b, err, errlen)) goto fail;
    } else if (memcmp(mk.bid, st.bid, sizeof st.bid) != 0 || mk.has_validator != st.has_validator ||
               memcmp(mk.validator, st.validator, NAWAL_PUBKEY_BYTES) != 0) {
        nawal_fail(err, errlen, "%s and %s belong to different budgets", b->path, b->marker);
        goto fail;
    }
    *out = b;
    return 0;
missing:
    nawal_fail(err, errlen,
               "%s is missing, but %s records that a privacy budget was started here: the privacy already spent "
               "would be forgotten; restore the file from a backup",
               b->path, b->marker);
fail:
    nawal_privacy_budget_close(b);
    return -1;
}

void nawal_privacy_budget_close(nawal_privacy_budget *b) {
    if (!b) return;
    if (b->lock_fd >= 0) close(b->lock_fd); /* releases the flock */
    free(b);
}

int nawal_privacy_budget_epsilon(const nawal_privacy_budget *b, double *eps, double *best_order, char *err,
                                 size_t errlen) {
    return nawal_accountant_epsilon(&b->acc, b->delta, eps, best_order, err, errlen);
}

int nawal_privacy_budget_would_exceed(const nawal_privacy_budget *b, double q, double sigma, uint64_t steps,
                                      double eps_limit, double *eps_after, int *exceeds, char *err, size_t errlen) {
    if (!(eps_limit >= 0.0)) return nawal_fail(err, errlen, "epsilon limit %g is not >= 0", eps_limit);
    if (nawal_accountant_epsilon_after(&b->acc, q, sigma, steps, b->delta, eps_after, NULL, err, errlen)) return -1;
    *exceeds = *eps_after > eps_limit;
    return 0;
}

int nawal_privacy_budget_record(nawal_privacy_budget *b, double q, double sigma, uint64_t steps, char *err,
                                size_t errlen) {
    if (steps > UINT64_MAX - b->steps || b->counter == UINT64_MAX)
        return nawal_fail(err, errlen, "%s: step counter would overflow", b->path);
    nawal_accountant next = b->acc;
    if (nawal_accountant_add(&next, q, sigma, steps, err, errlen)) return -1;
    if (write_state(b, b->counter + 1, b->steps + steps, &next, err, errlen)) return -1;
    b->acc = next;
    b->counter++;
    b->steps += steps;
    return 0;
}

uint64_t nawal_privacy_budget_steps(const nawal_privacy_budget *b) { return b->steps; }
uint64_t nawal_privacy_budget_counter(const nawal_privacy_budget *b) { return b->counter; }
double nawal_privacy_budget_delta(const nawal_privacy_budget *b) { return b->delta; }
const nawal_accountant *nawal_privacy_budget_accountant(const nawal_privacy_budget *b) { return &b->acc; }
const char *nawal_privacy_budget_path(const nawal_privacy_budget *b) { return b->path; }
