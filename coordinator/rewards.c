/* rewards.c - PoUW scores and the exact largest-remainder split (see
 * rewards.h). Integers only. */
#include "rewards.h"
#include "error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SCORE_BASE 600000000ull    /* 60% of NAWAL_SCORE_ONE */
#define SCORE_QUALITY 300000000ull /* 30% */
#define SCORE_STAKE 100000000ull   /* 10% */

_Static_assert(SCORE_BASE + SCORE_QUALITY + SCORE_STAKE == NAWAL_SCORE_ONE, "score weights sum to 1");
_Static_assert(SCORE_QUALITY % NAWAL_QUALITY_ONE == 0, "quality term is an exact integer multiple");
_Static_assert(NAWAL_REWARD_STAKE_CAP % SCORE_STAKE == 0, "stake term is a single exact division");

uint64_t nawal_reward_time_factor(int64_t elapsed_ms) {
    if (elapsed_ms <= NAWAL_REWARD_GRACE_MS) return NAWAL_SCORE_ONE; /* early: 1, never more */
    if (elapsed_ms >= NAWAL_REWARD_CUTOFF_MS) return 0;
    uint64_t left = (uint64_t)(NAWAL_REWARD_CUTOFF_MS - elapsed_ms); /* in (0, 1 h) */
    /* left < 3.6e6, so left * 1e9 < 3.6e15: no overflow */
    return left * NAWAL_SCORE_ONE / (uint64_t)(NAWAL_REWARD_CUTOFF_MS - NAWAL_REWARD_GRACE_MS);
}

uint64_t nawal_reward_score(const nawal_reward_input *in) {
    uint64_t q = in->quality_ppm > NAWAL_QUALITY_ONE ? NAWAL_QUALITY_ONE : in->quality_ppm;
    uint64_t stake = in->stake_planck > NAWAL_REWARD_STAKE_CAP ? NAWAL_REWARD_STAKE_CAP : in->stake_planck;
    uint64_t raw = SCORE_BASE + q * (SCORE_QUALITY / NAWAL_QUALITY_ONE) /* 30% x q */
                 + stake / (NAWAL_REWARD_STAKE_CAP / SCORE_STAKE);     /* 10% x stake / cap, floor */
    /* raw <= 1e9 and time factor <= 1e9: product <= 1e18 < 2^64 */
    return raw * nawal_reward_time_factor(in->elapsed_ms) / NAWAL_SCORE_ONE;
}

typedef struct {
    uint64_t rem;
    size_t idx;
    const uint8_t *key; /* NULL: tie goes by idx */
} remainder_entry;

/* Largest remainder first, then key ascending, then position. */
static int cmp_remainder(const void *pa, const void *pb) {
    const remainder_entry *a = pa, *b = pb;
    if (a->rem != b->rem) return a->rem > b->rem ? -1 : 1;
    if (a->key && b->key) {
        int c = memcmp(a->key, b->key, 32);
        if (c) return c;
    }
    return a->idx < b->idx ? -1 : a->idx > b->idx;
}

int nawal_rewards_split_scores(uint64_t pool, const uint64_t *scores, const uint8_t *keys, size_t n,
                               uint64_t *payouts, char *err, size_t errlen) {
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (scores[i] > UINT64_MAX - total) return nawal_fail(err, errlen, "rewards: sum of scores overflows");
        total += scores[i];
        payouts[i] = 0;
    }
    if (total == 0) return NAWAL_REWARDS_UNDISTRIBUTED;

    remainder_entry *rem = calloc(n, sizeof *rem);
    if (!rem) return nawal_fail(err, errlen, "rewards: out of memory for %zu validators", n);
    uint64_t given = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned __int128 p = (unsigned __int128)pool * scores[i];
        /* score_i <= total, so the quotient <= pool fits u64 */
        payouts[i] = (uint64_t)(p / total);
        rem[i].rem = (uint64_t)(p % total);
        rem[i].idx = i;
        rem[i].key = keys ? keys + 32 * i : NULL;
        given += payouts[i]; /* sum of floors <= pool: no overflow */
    }
    /* Sum of remainders = pool * total - total * sum(floors), a multiple of
     * total below n * total: the leftover is an integer below n. */
    uint64_t left = pool - given;
    if (left) {
        qsort(rem, n, sizeof *rem, cmp_remainder);
        for (uint64_t k = 0; k < left; k++) payouts[rem[k].idx] += 1;
    }
    free(rem);
    return NAWAL_REWARDS_OK;
}

int nawal_rewards_split(uint64_t pool, const nawal_reward_input *in, size_t n, uint64_t *payouts,
                        char *err, size_t errlen) {
    if (n == 0) return NAWAL_REWARDS_UNDISTRIBUTED;
    uint64_t *scores = calloc(n, sizeof *scores);
    uint8_t *keys = calloc(n, 32);
    if (!scores || !keys) {
        free(scores);
        free(keys);
        return nawal_fail(err, errlen, "rewards: out of memory for %zu validators", n);
    }
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        if (in[i].quality_ppm > NAWAL_QUALITY_ONE)
            rc = nawal_fail(err, errlen, "rewards: quality %u ppm of validator %zu is above 1 (%u ppm)",
                            in[i].quality_ppm, i, NAWAL_QUALITY_ONE);
        scores[i] = nawal_reward_score(&in[i]);
        memcpy(keys + 32 * i, in[i].pubkey, 32);
    }
    if (rc == 0) rc = nawal_rewards_split_scores(pool, scores, keys, n, payouts, err, errlen);
    free(scores);
    free(keys);
    return rc;
}

char *nawal_planck_to_dalla(char out[NAWAL_DALLA_STR_BYTES], uint64_t planck) {
    uint64_t whole = planck / NAWAL_PLANCK_PER_DALLA, frac = planck % NAWAL_PLANCK_PER_DALLA;
    /* snprintf of integers only */
    snprintf(out, NAWAL_DALLA_STR_BYTES, "%llu.%012llu", (unsigned long long)whole, (unsigned long long)frac);
    return out;
}

int nawal_parse_u64(const char *s, uint64_t *out) {
    if (!s || !*s) return -1;
    uint64_t v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9') return -1;
        uint64_t d = (uint64_t)(*p - '0');
        if (v > (UINT64_MAX - d) / 10) return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}
