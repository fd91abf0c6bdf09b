/* state.c - see state.h. */
#include "state.h"
#include "cid.h"
#include "error.h"
#include "fileio.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SUBMISSION_MAGIC "nawal-agent-submission-v1"

static int mkdir_one(const char *path, char *err, size_t errlen) {
    if (mkdir(path, 0700) == 0 || errno == EEXIST) return 0;
    return nawal_fail(err, errlen, "cannot create directory %s: %s", path, strerror(errno));
}

static int join(char *out, size_t cap, const char *dir, const char *name) {
    int n = snprintf(out, cap, "%s/%s", dir, name);
    return n < 0 || (size_t)n >= cap ? -1 : 0;
}

int nawal_agent_state_init(const char *dir, char *err, size_t errlen) {
    char p[4096];
    if (mkdir_one(dir, err, errlen)) return -1;
    if (join(p, sizeof p, dir, "models") || mkdir_one(p, err, errlen)) return nawal_fail(err, errlen, "%s: cannot create models/", dir);
    if (join(p, sizeof p, dir, "deltas") || mkdir_one(p, err, errlen)) return nawal_fail(err, errlen, "%s: cannot create deltas/", dir);
    if (join(p, sizeof p, dir, "patches") || mkdir_one(p, err, errlen)) return nawal_fail(err, errlen, "%s: cannot create patches/", dir);
    return 0;
}

int nawal_agent_model_path(char *out, size_t cap, const char *dir, const uint8_t cid[32]) {
    char hex[NAWAL_CID_HEX_BYTES];
    nawal_cid_to_hex(hex, cid);
    int n = snprintf(out, cap, "%s/models/%s.safetensors", dir, hex);
    return n < 0 || (size_t)n >= cap ? -1 : 0;
}

int nawal_agent_delta_path(char *out, size_t cap, const char *dir, const uint8_t cid[32]) {
    char hex[NAWAL_CID_HEX_BYTES];
    nawal_cid_to_hex(hex, cid);
    int n = snprintf(out, cap, "%s/deltas/%s", dir, hex);
    return n < 0 || (size_t)n >= cap ? -1 : 0;
}

int nawal_agent_patch_path(char *out, size_t cap, const char *dir, const uint8_t cid[32]) {
    char hex[NAWAL_CID_HEX_BYTES];
    nawal_cid_to_hex(hex, cid);
    int n = snprintf(out, cap, "%s/patches/%s", dir, hex);
    return n < 0 || (size_t)n >= cap ? -1 : 0;
}

int nawal_agent_train_ckpt_path(char *out, size_t cap, const char *dir) { return join(out, cap, dir, "train.ckpt"); }

void nawal_agent_train_ckpt_remove(const char *dir) {
    char path[4096];
    if (nawal_agent_train_ckpt_path(path, sizeof path, dir)) return;
    int gone = unlink(path) == 0;
    if (nawal_file_leftovers_remove(path) > 0 || gone) nawal_fsync_parent_dir(path);
}

int nawal_agent_model_cached(const char *dir, const uint8_t cid[32], char *err, size_t errlen) {
    char path[4096];
    if (nawal_agent_model_path(path, sizeof path, dir, cid)) return nawal_fail(err, errlen, "%s: path too long", dir);
    if (access(path, F_OK) != 0) return 0;
    uint8_t got[32];
    if (nawal_cid_of_file(got, NULL, path, err, errlen)) return -1;
    if (nawal_cid_equal(got, cid)) return 1;
    fprintf(stderr, "warning: cached model %s does not match its CID; downloading it again\n", path);
    unlink(path);
    return 0;
}

int nawal_agent_submission_load(const char *dir, nawal_agent_submission *s, char *err, size_t errlen) {
    char path[4096];
    memset(s, 0, sizeof *s);
    if (join(path, sizeof path, dir, "submission")) return nawal_fail(err, errlen, "%s: path too long", dir);
    FILE *f = fopen(path, "r");
    if (!f) {
        if (errno == ENOENT) return 0;
        return nawal_fail(err, errlen, "%s: cannot open: %s", path, strerror(errno));
    }
    char magic[64] = "", base[80] = "", delta[80] = "";
    unsigned long long round, size, examples;
    int acked = -1, extra = 0;
    int got = fscanf(f,
                     "%63s round %llu base %79s delta %79s size %llu examples %llu epsilon %lf quality %f "
                     "train_loss %f val_loss %f tokens_per_s %lf acked %d %n",
                     magic, &round, base, delta, &size, &examples, &s->epsilon, &s->quality, &s->train_loss,
                     &s->val_loss, &s->tokens_per_s, &acked, &extra);
    int trailing = got == 12 && fgetc(f) != EOF;
    fclose(f);
    if (got != 12 || trailing || strcmp(magic, SUBMISSION_MAGIC) || (acked != 0 && acked != 1) ||
        nawal_cid_from_hex(s->base, base, NULL, 0) || nawal_cid_from_hex(s->delta, delta, NULL, 0)) {
        memset(s, 0, sizeof *s);
        return nawal_fail(err, errlen, "%s: malformed submission record (remove it to start over)", path);
    }
    s->round = round;
    s->size = size;
    s->examples = examples;
    s->acked = acked;
    return 1;
}

int nawal_agent_submission_save(const char *dir, const nawal_agent_submission *s, char *err, size_t errlen) {
    char path[4096], base[NAWAL_CID_HEX_BYTES], delta[NAWAL_CID_HEX_BYTES], text[1024];
    if (join(path, sizeof path, dir, "submission")) return nawal_fail(err, errlen, "%s: path too long", dir);
    nawal_cid_to_hex(base, s->base);
    nawal_cid_to_hex(delta, s->delta);
    int n = snprintf(text, sizeof text,
                     SUBMISSION_MAGIC "\nround %llu\nbase %s\ndelta %s\nsize %llu\nexamples %llu\nepsilon %.17g\n"
                     "quality %.9g\ntrain_loss %.9g\nval_loss %.9g\ntokens_per_s %.17g\nacked %d\n",
                     (unsigned long long)s->round, base, delta, (unsigned long long)s->size,
                     (unsigned long long)s->examples, s->epsilon, (double)s->quality, (double)s->train_loss,
                     (double)s->val_loss, s->tokens_per_s, s->acked ? 1 : 0);
    nawal_chunk c = {text, (size_t)n};
    return nawal_file_replace(path, &c, 1, 0600, err, errlen);
}

uint64_t nawal_agent_joined_load(const char *dir) {
    char path[4096];
    unsigned long long r = 0;
    if (join(path, sizeof path, dir, "joined")) return 0;
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    if (fscanf(f, "round %llu", &r) != 1) r = 0;
    fclose(f);
    return r;
}

int nawal_agent_joined_save(const char *dir, uint64_t round, char *err, size_t errlen) {
    char path[4096], text[64];
    if (join(path, sizeof path, dir, "joined")) return nawal_fail(err, errlen, "%s: path too long", dir);
    int n = snprintf(text, sizeof text, "round %llu\n", (unsigned long long)round);
    nawal_chunk c = {text, (size_t)n};
    return nawal_file_replace(path, &c, 1, 0600, err, errlen);
}

int nawal_agent_residual_load(const char *dir, float *r, size_t n, char *err, size_t errlen) {
    char path[4096];
    memset(r, 0, n * sizeof *r);
    if (join(path, sizeof path, dir, "residual.f32")) return nawal_fail(err, errlen, "%s: path too long", dir);
    FILE *f = fopen(path, "rb");
    if (!f) return errno == ENOENT ? 0 : nawal_fail(err, errlen, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    int rc = 0;
    if (fstat(fileno(f), &st) || (uint64_t)st.st_size != (uint64_t)n * sizeof(float)) {
        fprintf(stderr, "warning: %s does not hold %zu floats (the model changed); starting from a zero residual\n", path, n);
    } else if (fread(r, sizeof(float), n, f) != n) {
        memset(r, 0, n * sizeof *r);
        rc = nawal_fail(err, errlen, "%s: read error", path);
    }
    fclose(f);
    return rc;
}

int nawal_agent_residual_stage(const char *dir, const float *r, size_t n, char *err, size_t errlen) {
    char path[4096];
    if (join(path, sizeof path, dir, "residual.pending.f32")) return nawal_fail(err, errlen, "%s: path too long", dir);
    nawal_chunk c = {r, n * sizeof *r};
    return nawal_file_replace(path, &c, 1, 0600, err, errlen);
}

int nawal_agent_residual_commit(const char *dir, char *err, size_t errlen) {
    char from[4096], to[4096];
    if (join(from, sizeof from, dir, "residual.pending.f32") || join(to, sizeof to, dir, "residual.f32"))
        return nawal_fail(err, errlen, "%s: path too long", dir);
    if (rename(from, to) != 0) {
        if (errno == ENOENT) return 0;
        return nawal_fail(err, errlen, "cannot rename %s to %s: %s", from, to, strerror(errno));
    }
    nawal_fsync_parent_dir(to);
    return 0;
}

void nawal_agent_residual_discard(const char *dir) {
    char path[4096];
    if (join(path, sizeof path, dir, "residual.pending.f32") == 0) unlink(path);
}
