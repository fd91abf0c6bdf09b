/* test_util.h - helpers shared by the unit tests: a fresh random seed per
 * run (printed, and overridable with NAWAL_TEST_SEED to replay a failure)
 * and a small splitmix64 generator for test data. */
#ifndef NAWAL_TEST_UTIL_H
#define NAWAL_TEST_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <time.h>
#include <unistd.h>

static inline uint64_t test_seed(const char *who) {
    const char *env = getenv("NAWAL_TEST_SEED");
    uint64_t s;
    if (env) s = strtoull(env, NULL, 0);
    else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        s = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ ((uint64_t)getpid() << 40);
    }
    fprintf(stderr, "[%s] seed %llu (replay with NAWAL_TEST_SEED=%llu)\n", who,
            (unsigned long long)s, (unsigned long long)s);
    return s;
}

/* A bf16 test on a CPU without bf16 matmul units is skipped with why, or
 * failed where NAWAL_REQUIRE_BF16 is set (on hosts known to have them, so
 * the tests cannot pass by skipping). Include after criterion.h. */
#define TEST_SKIP_WITHOUT_BF16(why)                                                                  \
    do {                                                                                             \
        if (getenv("NAWAL_REQUIRE_BF16")) cr_assert_fail("NAWAL_REQUIRE_BF16 is set but: %s", (why)); \
        cr_skip_test("%s", (why));                                                                   \
    } while (0)

static inline uint64_t test_rand_u64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* uniform in [0,1) */
static inline double test_rand_unit(uint64_t *s) { return (double)(test_rand_u64(s) >> 11) * (1.0 / 9007199254740992.0); }

static inline float test_rand_normal(uint64_t *s) {
    double u1 = test_rand_unit(s), u2 = test_rand_unit(s);
    if (u1 < 1e-300) u1 = 1e-300;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

static inline int test_rand_int(uint64_t *s, int n) { return (int)(test_rand_u64(s) % (uint64_t)n); }

/* A seeded generator as a value, for tests that pass one around. */
typedef struct {
    uint64_t s;
} rng;

static inline uint64_t rng_next(rng *r) { return test_rand_u64(&r->s); }
static inline size_t rng_below(rng *r, size_t n) { return n ? (size_t)(rng_next(r) % n) : 0; }

/* A fresh seed from /dev/urandom (or NAWAL_TEST_SEED), not printed: the
 * caller puts it in its assertion messages. */
static inline uint64_t fresh_seed(void) {
    const char *env = getenv("NAWAL_TEST_SEED");
    if (env && *env) return strtoull(env, NULL, 10);
    uint64_t s = 0;
    FILE *f = fopen("/dev/urandom", "rb");
    if (!f || fread(&s, sizeof s, 1, f) != 1) s = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    if (f) fclose(f);
    return s;
}

#endif
