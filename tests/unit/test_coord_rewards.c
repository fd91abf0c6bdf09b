/* test_coord_rewards.c - PoUW rewards (coordinator/rewards.h): the pool is
 * always distributed exactly, each payout within 1 planck of its exact
 * rational share, payouts monotone in score and independent of input order,
 * the time factor never above 1 (the early-bonus clamp) and 0 from 2 h, a
 * hand-computed example, and the integer DALLA formatting / strict parse. */
#include "rewards.h"
#include "test_util.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

typedef unsigned __int128 u128;

#define HOUR_MS 3600000ll

static uint64_t rand_pool(uint64_t *s) {
    switch (test_rand_int(s, 6)) {
    case 0: return UINT64_MAX - (test_rand_u64(s) % 1000);   /* near 2^64 - 1 */
    case 1: return test_rand_u64(s);                          /* anything */
    case 2: return test_rand_u64(s) % 1000;                   /* tiny: fewer planck than validators */
    case 3: return (test_rand_u64(s) % 1000000) * NAWAL_PLANCK_PER_DALLA; /* whole DALLA */
    case 4: return 0;
    default: return test_rand_u64(s) >> test_rand_int(s, 64);
    }
}

static void rand_input(uint64_t *s, nawal_reward_input *in, size_t i) {
    for (int k = 0; k < 32; k++) in->pubkey[k] = (uint8_t)test_rand_u64(s);
    memcpy(in->pubkey, &i, sizeof i); /* distinct keys */
    in->quality_ppm = test_rand_int(s, 5) == 0 ? (test_rand_int(s, 2) ? NAWAL_QUALITY_ONE : 0)
                                               : (uint32_t)(test_rand_u64(s) % (NAWAL_QUALITY_ONE + 1));
    switch (test_rand_int(s, 4)) {
    case 0: in->stake_planck = test_rand_u64(s); break;
    case 1: in->stake_planck = test_rand_u64(s) % (2 * NAWAL_REWARD_STAKE_CAP); break;
    case 2: in->stake_planck = NAWAL_REWARD_STAKE_CAP; break;
    default: in->stake_planck = test_rand_u64(s) % 1000; break;
    }
    switch (test_rand_int(s, 5)) {
    case 0: in->elapsed_ms = -(int64_t)(test_rand_u64(s) % HOUR_MS); break; /* clock skew */
    case 1: in->elapsed_ms = (int64_t)(test_rand_u64(s) % HOUR_MS); break;
    case 2: in->elapsed_ms = HOUR_MS + (int64_t)(test_rand_u64(s) % HOUR_MS); break;
    case 3: in->elapsed_ms = 2 * HOUR_MS + (int64_t)(test_rand_u64(s) % (10 * HOUR_MS)); break;
    default: in->elapsed_ms = (int64_t)(test_rand_u64(s) % (3 * HOUR_MS)); break;
    }
}

static const uint64_t *g_scores;
static int by_score(const void *a, const void *b) {
    uint64_t x = g_scores[*(const size_t *)a], y = g_scores[*(const size_t *)b];
    return x < y ? -1 : x > y;
}

/* The split properties for given scores and payouts. */
static void check_split(uint64_t pool, const uint64_t *scores, const uint64_t *pay, size_t n, int rc) {
    u128 total = 0, sum = 0;
    for (size_t i = 0; i < n; i++) total += scores[i], sum += pay[i];
    if (total == 0) {
        cr_assert_eq(rc, NAWAL_REWARDS_UNDISTRIBUTED);
        cr_assert(sum == 0, "nothing may be paid when every score is 0");
        return;
    }
    cr_assert_eq(rc, NAWAL_REWARDS_OK);
    cr_assert(sum == pool, "sum of payouts %llu != pool %llu", (unsigned long long)sum, (unsigned long long)pool);
    for (size_t i = 0; i < n; i++) {
        /* |pay_i - pool*score_i/total| < 1  <=>  |pay_i*total - pool*score_i| < total */
        u128 a = (u128)pay[i] * total, b = (u128)pool * scores[i];
        u128 d = a > b ? a - b : b - a;
        cr_assert(d < total, "payout %zu = %llu is not within 1 planck of its share", i, (unsigned long long)pay[i]);
    }
    /* monotone: a higher score never gets less */
    size_t *ord = malloc(n * sizeof *ord);
    cr_assert(ord);
    for (size_t i = 0; i < n; i++) ord[i] = i;
    g_scores = scores;
    qsort(ord, n, sizeof *ord, by_score);
    uint64_t max_below = 0; /* largest payout among strictly lower scores */
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        uint64_t lo = UINT64_MAX, hi = 0;
        while (j < n && scores[ord[j]] == scores[ord[i]]) {
            uint64_t p = pay[ord[j]];
            lo = p < lo ? p : lo;
            hi = p > hi ? p : hi;
            j++;
        }
        if (i) cr_assert(lo >= max_below, "payout not monotone in score");
        cr_assert(hi - lo <= 1, "equal scores paid more than 1 planck apart");
        max_below = hi > max_below ? hi : max_below;
        i = j;
    }
    free(ord);
}

Test(coord_rewards, property_random_inputs) {
    uint64_t seed = test_seed("coord_rewards.property");
    enum { TRIALS = 4000 };
    for (int t = 0; t < TRIALS; t++) {
        size_t n = test_rand_int(&seed, 10) == 0 ? 1 + (size_t)test_rand_int(&seed, 3000) : 1 + (size_t)test_rand_int(&seed, 40);
        uint64_t pool = rand_pool(&seed);
        nawal_reward_input *in = calloc(n, sizeof *in);
        uint64_t *pay = calloc(n, sizeof *pay), *pay2 = calloc(n, sizeof *pay2), *scores = calloc(n, sizeof *scores);
        size_t *perm = calloc(n, sizeof *perm);
        nawal_reward_input *shuf = calloc(n, sizeof *shuf);
        cr_assert(in && pay && pay2 && scores && perm && shuf);
        for (size_t i = 0; i < n; i++) rand_input(&seed, &in[i], i);
        char err[256] = "";
        int rc = nawal_rewards_split(pool, in, n, pay, err, sizeof err);
        cr_assert(rc >= 0, "split failed: %s", err);
        for (size_t i = 0; i < n; i++) {
            scores[i] = nawal_reward_score(&in[i]);
            cr_assert(scores[i] <= NAWAL_SCORE_ONE, "score above 1");
        }
        check_split(pool, scores, pay, n, rc);

        /* the same inputs in another order pay each key the same */
        for (size_t i = 0; i < n; i++) perm[i] = i;
        for (size_t i = n; i > 1; i--) {
            size_t j = (size_t)(test_rand_u64(&seed) % i), tmp = perm[i - 1];
            perm[i - 1] = perm[j];
            perm[j] = tmp;
        }
        for (size_t i = 0; i < n; i++) shuf[i] = in[perm[i]];
        cr_assert_eq(nawal_rewards_split(pool, shuf, n, pay2, err, sizeof err), rc);
        for (size_t i = 0; i < n; i++) cr_assert_eq(pay2[i], pay[perm[i]], "payout depends on input order");
        free(in); free(pay); free(pay2); free(scores); free(perm); free(shuf);
    }
}

/* The split alone over raw scores of any size (sum within u64). */
Test(coord_rewards, property_raw_scores) {
    uint64_t seed = test_seed("coord_rewards.raw");
    for (int t = 0; t < 3000; t++) {
        size_t n = 1 + (size_t)test_rand_int(&seed, 64);
        uint64_t pool = rand_pool(&seed), cap = UINT64_MAX / n;
        uint64_t *scores = calloc(n, sizeof *scores), *pay = calloc(n, sizeof *pay);
        uint8_t *keys = calloc(n, 32);
        cr_assert(scores && pay && keys);
        int mode = test_rand_int(&seed, 4);
        for (size_t i = 0; i < n; i++) {
            scores[i] = mode == 0 ? cap - test_rand_u64(&seed) % 3       /* huge, near-equal */
                      : mode == 1 ? test_rand_u64(&seed) % 4             /* tiny, many ties and zeros */
                      : mode == 2 ? 7                                    /* all equal */
                                  : (cap == UINT64_MAX ? test_rand_u64(&seed) : test_rand_u64(&seed) % (cap + 1));
            for (int k = 0; k < 32; k++) keys[32 * i + k] = (uint8_t)test_rand_u64(&seed);
            memcpy(keys + 32 * i, &i, sizeof i);
        }
        char err[256] = "";
        int rc = nawal_rewards_split_scores(pool, scores, keys, n, pay, err, sizeof err);
        cr_assert(rc >= 0, "%s", err);
        check_split(pool, scores, pay, n, rc);
        free(scores); free(pay); free(keys);
    }
    /* a sum of scores beyond u64 is refused, not wrapped */
    uint64_t big[2] = {UINT64_MAX, 1}, pay[2];
    cr_assert_eq(nawal_rewards_split_scores(100, big, NULL, 2, pay, NULL, 0), -1);
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

Test(coord_rewards, time_factor_and_clamp) {
    cr_assert_eq(nawal_reward_time_factor(0), NAWAL_SCORE_ONE);
    cr_assert_eq(nawal_reward_time_factor(HOUR_MS), NAWAL_SCORE_ONE);
    cr_assert_eq(nawal_reward_time_factor(HOUR_MS + HOUR_MS / 2), NAWAL_SCORE_ONE / 2);
    cr_assert_eq(nawal_reward_time_factor(HOUR_MS + HOUR_MS / 4), 750000000ull);
    cr_assert_eq(nawal_reward_time_factor(2 * HOUR_MS - 1), 277ull); /* 1e9 / 3.6e6, floored */
    cr_assert_eq(nawal_reward_time_factor(2 * HOUR_MS), 0);
    cr_assert_eq(nawal_reward_time_factor(INT64_MAX), 0);
    cr_assert_eq(nawal_reward_time_factor(INT64_MIN), NAWAL_SCORE_ONE);

    uint64_t seed = test_seed("coord_rewards.time");
    uint64_t prev_f = NAWAL_SCORE_ONE;
    enum { NT = 20000 };
    int64_t *ts = malloc(NT * sizeof *ts);
    cr_assert(ts);
    for (int i = 0; i < NT; i++) ts[i] = (int64_t)(test_rand_u64(&seed) % (4 * HOUR_MS)) - HOUR_MS;
    qsort(ts, NT, sizeof *ts, cmp_i64);
    for (int i = 0; i < NT; i++) {
        uint64_t f = nawal_reward_time_factor(ts[i]);
        cr_assert(f <= NAWAL_SCORE_ONE, "time factor above 1 at %lld ms", (long long)ts[i]);
        if (ts[i] <= HOUR_MS) cr_assert_eq(f, NAWAL_SCORE_ONE, "a submission before 1 h must get exactly 1, no bonus");
        if (ts[i] >= 2 * HOUR_MS) cr_assert_eq(f, 0, "a submission after 2 h must get 0");
        cr_assert(f <= prev_f, "time factor increases at %lld ms", (long long)ts[i]);
        prev_f = f;
    }
    free(ts);

    /* the seed's early-bonus case: the earliest, best submitter scores exactly 1, never 2 */
    nawal_reward_input best = {.quality_ppm = NAWAL_QUALITY_ONE, .stake_planck = UINT64_MAX, .elapsed_ms = 0};
    cr_assert_eq(nawal_reward_score(&best), NAWAL_SCORE_ONE);
    best.elapsed_ms = -5 * HOUR_MS;
    cr_assert_eq(nawal_reward_score(&best), NAWAL_SCORE_ONE);
    best.elapsed_ms = 2 * HOUR_MS;
    cr_assert_eq(nawal_reward_score(&best), 0);
    /* an early submitter gets the same share as a submitter at exactly 1 h */
    nawal_reward_input two[2] = {
        {.pubkey = {1}, .quality_ppm = 500000, .stake_planck = 0, .elapsed_ms = 1},
        {.pubkey = {2}, .quality_ppm = 500000, .stake_planck = 0, .elapsed_ms = HOUR_MS},
    };
    uint64_t pay[2];
    cr_assert_eq(nawal_rewards_split(1000, two, 2, pay, NULL, 0), NAWAL_REWARDS_OK);
    cr_assert_eq(pay[0], 500);
    cr_assert_eq(pay[1], 500);

    /* stake term clamped at 1: 10000 DALLA and 10^7 DALLA score the same */
    nawal_reward_input a = {.quality_ppm = 0, .stake_planck = NAWAL_REWARD_STAKE_CAP}, b = a;
    b.stake_planck = 1000 * NAWAL_REWARD_STAKE_CAP;
    cr_assert_eq(nawal_reward_score(&a), 700000000ull);
    cr_assert_eq(nawal_reward_score(&b), 700000000ull);
    a.stake_planck = NAWAL_REWARD_STAKE_CAP / 2;
    cr_assert_eq(nawal_reward_score(&a), 650000000ull);
}

Test(coord_rewards, hand_computed_example) {
    /* A: q 1, stake 10000 DALLA, on time      -> 0.6 + 0.3 + 0.1        = 1.000
     * B: q 0.5, no stake, 30 min              -> 0.6 + 0.15             = 0.750
     * C: q 0, 5000 DALLA, 1.5 h (factor 0.5)  -> (0.6 + 0.05) x 0.5     = 0.325
     * S = 2.075; pool 1000: shares 481.93, 361.45, 156.63 -> floors 481 + 361 + 156 = 998,
     * the 2 left over go to the largest remainders, A (.93) and C (.63). */
    nawal_reward_input in[3] = {
        {.pubkey = {0xA}, .quality_ppm = 1000000, .stake_planck = 10000 * NAWAL_PLANCK_PER_DALLA, .elapsed_ms = 0},
        {.pubkey = {0xB}, .quality_ppm = 500000, .stake_planck = 0, .elapsed_ms = 30 * 60000},
        {.pubkey = {0xC}, .quality_ppm = 0, .stake_planck = 5000 * NAWAL_PLANCK_PER_DALLA, .elapsed_ms = 90 * 60000},
    };
    cr_assert_eq(nawal_reward_score(&in[0]), 1000000000ull);
    cr_assert_eq(nawal_reward_score(&in[1]), 750000000ull);
    cr_assert_eq(nawal_reward_score(&in[2]), 325000000ull);
    uint64_t pay[3];
    cr_assert_eq(nawal_rewards_split(1000, in, 3, pay, NULL, 0), NAWAL_REWARDS_OK);
    cr_assert_eq(pay[0], 482);
    cr_assert_eq(pay[1], 361);
    cr_assert_eq(pay[2], 157);

    /* Ties in the remainder go to the smaller key, whatever the order. */
    nawal_reward_input tie[2] = {{.pubkey = {0x20}, .quality_ppm = 0}, {.pubkey = {0x10}, .quality_ppm = 0}};
    cr_assert_eq(nawal_rewards_split(3, tie, 2, pay, NULL, 0), NAWAL_REWARDS_OK);
    cr_assert_eq(pay[0], 1);
    cr_assert_eq(pay[1], 2);
    /* one planck among three equal scores: the smallest key */
    nawal_reward_input three[3] = {{.pubkey = {3}}, {.pubkey = {1}}, {.pubkey = {2}}};
    cr_assert_eq(nawal_rewards_split(1, three, 3, pay, NULL, 0), NAWAL_REWARDS_OK);
    cr_assert_eq(pay[0], 0);
    cr_assert_eq(pay[1], 1);
    cr_assert_eq(pay[2], 0);
    /* the whole u64 pool to a single validator */
    cr_assert_eq(nawal_rewards_split(UINT64_MAX, in, 1, pay, NULL, 0), NAWAL_REWARDS_OK);
    cr_assert_eq(pay[0], UINT64_MAX);
}

Test(coord_rewards, nothing_to_distribute_and_bad_input) {
    uint64_t pay[2] = {9, 9};
    nawal_reward_input late[2] = {
        {.pubkey = {1}, .quality_ppm = 1000000, .elapsed_ms = 2 * HOUR_MS},
        {.pubkey = {2}, .quality_ppm = 1000000, .elapsed_ms = 9 * HOUR_MS},
    };
    cr_assert_eq(nawal_rewards_split(1000, late, 2, pay, NULL, 0), NAWAL_REWARDS_UNDISTRIBUTED);
    cr_assert_eq(pay[0], 0);
    cr_assert_eq(pay[1], 0);
    cr_assert_eq(nawal_rewards_split(1000, late, 0, pay, NULL, 0), NAWAL_REWARDS_UNDISTRIBUTED);

    char err[256] = "";
    nawal_reward_input bad = {.quality_ppm = NAWAL_QUALITY_ONE + 1};
    cr_assert_eq(nawal_rewards_split(1000, &bad, 1, pay, err, sizeof err), -1);
    cr_assert(strstr(err, "quality"), "%s", err);
}

Test(coord_rewards, dalla_formatting_and_strict_parse) {
    char b[NAWAL_DALLA_STR_BYTES];
    cr_assert_str_eq(nawal_planck_to_dalla(b, 0), "0.000000000000");
    cr_assert_str_eq(nawal_planck_to_dalla(b, 1), "0.000000000001");
    cr_assert_str_eq(nawal_planck_to_dalla(b, NAWAL_PLANCK_PER_DALLA), "1.000000000000");
    cr_assert_str_eq(nawal_planck_to_dalla(b, 1234567890123456ull), "1234.567890123456");
    cr_assert_str_eq(nawal_planck_to_dalla(b, UINT64_MAX), "18446744.073709551615");

    uint64_t v = 7;
    cr_assert_eq(nawal_parse_u64("18446744073709551615", &v), 0);
    cr_assert_eq(v, UINT64_MAX);
    cr_assert_eq(nawal_parse_u64("0", &v), 0);
    cr_assert_eq(v, 0);
    const char *bad[] = {"", "-1", "+1", " 1", "1 ", "0x10", "1e3", "1.5", "18446744073709551616", "99999999999999999999", NULL};
    for (int i = 0; bad[i]; i++) cr_assert_eq(nawal_parse_u64(bad[i], &v), -1, "'%s' accepted", bad[i]);
    cr_assert_eq(nawal_parse_u64(NULL, &v), -1);
}
