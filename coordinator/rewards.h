/* rewards.h - proof-of-useful-work rewards: a round's pool split between
 * the validators whose updates were accepted, in integer planck
 * (1 DALLA = 10^12 planck). Pure functions, no I/O; no floating point
 * anywhere on the path from inputs to payouts.
 *
 * Score of validator i, in parts per NAWAL_SCORE_ONE (10^9), every step an
 * integer floor:
 *
 *   raw_i    = 60%                                    base
 *            + 30% x quality_i                        quality_ppm / 10^6, in [0, 1]
 *            + 10% x min(stake_i / 10000 DALLA, 1)    stake term, clamped at 1
 *   time_i   = 1                       if elapsed_i <= 1 h (or negative)
 *            = (2 h - elapsed_i) / 1 h if 1 h < elapsed_i < 2 h
 *            = 0                       if elapsed_i >= 2 h
 *   score_i  = raw_i x time_i                         <= 1
 *
 * where elapsed_i is the time from the round's start to the receipt of the
 * update. The time factor never exceeds 1: an early submission gets no bonus
 * (a seed formula of the form 2 - elapsed/1h paid up to 2x; that is the bug
 * this clamp prevents). The stake term is clamped at 1 likewise, so raw_i
 * and score_i are at most 10^9.
 *
 * Split: payout_i = floor(pool x score_i / S) with S = sum of scores, then
 * the pool - sum(floors) planck left over (fewer than n) go one each to the
 * validators with the largest remainders (pool x score_i mod S), ties broken
 * by public key, bytewise ascending, then by input position. So
 *   - sum(payout_i) == pool exactly,
 *   - |payout_i - pool x score_i / S| < 1 planck,
 *   - score_i > score_j implies payout_i >= payout_j,
 *   - the result depends only on the inputs (not on their order, for
 *     distinct keys).
 * The products are computed in unsigned __int128, so any u64 pool and any
 * number of validators (S fits u64 while n < 1.8 x 10^10) is exact.
 *
 * If S == 0 (no validators, or every score 0: all updates at or after 2 h)
 * nothing is distributed: every payout is 0 and nawal_rewards_split returns
 * NAWAL_REWARDS_UNDISTRIBUTED, and the caller records the whole pool as
 * undistributed (the ledger does). */
#ifndef NAWAL_REWARDS_H
#define NAWAL_REWARDS_H

#include <stddef.h>
#include <stdint.h>

#define NAWAL_PLANCK_PER_DALLA 1000000000000ull
#define NAWAL_SCORE_ONE 1000000000ull       /* score 1.0 */
#define NAWAL_QUALITY_ONE 1000000u          /* quality 1.0, in parts per million */
#define NAWAL_REWARD_STAKE_CAP (10000ull * NAWAL_PLANCK_PER_DALLA) /* stake term reaches 1 here */
#define NAWAL_REWARD_GRACE_MS 3600000ll     /* full time factor up to 1 h */
#define NAWAL_REWARD_CUTOFF_MS 7200000ll    /* zero time factor from 2 h */

/* Longest "DALLA with 12 decimals" string: 20 digits, '.', NUL. */
#define NAWAL_DALLA_STR_BYTES 24

typedef struct {
    uint8_t pubkey[32];
    uint32_t quality_ppm;  /* quality in [0, NAWAL_QUALITY_ONE] */
    uint64_t stake_planck;
    int64_t elapsed_ms;    /* receipt time - round start; negative counts as 0 */
} nawal_reward_input;

enum { NAWAL_REWARDS_OK = 0, NAWAL_REWARDS_UNDISTRIBUTED = 1 };

/* Time factor in parts per NAWAL_SCORE_ONE: in [0, 10^9], never above. */
uint64_t nawal_reward_time_factor(int64_t elapsed_ms);

/* Score in parts per NAWAL_SCORE_ONE (see above), in [0, 10^9]. quality_ppm
 * above NAWAL_QUALITY_ONE is clamped (nawal_rewards_split refuses it). */
uint64_t nawal_reward_score(const nawal_reward_input *in);

/* Splits pool by the scores of in[0..n) into payouts[0..n). Returns
 * NAWAL_REWARDS_OK, NAWAL_REWARDS_UNDISTRIBUTED (all payouts 0, see above),
 * or -1 with a message for bad input (quality above 1). */
int nawal_rewards_split(uint64_t pool_planck, const nawal_reward_input *in, size_t n, uint64_t *payouts,
                        char *err, size_t errlen);

/* The split alone, for given scores (any u64 values whose sum fits u64;
 * -1 if it does not). keys (n x 32 bytes, key i at keys + 32 i) break
 * remainder ties; keys may be NULL, then ties go by position. Same return
 * values as above. */
int nawal_rewards_split_scores(uint64_t pool_planck, const uint64_t *scores, const uint8_t *keys, size_t n,
                               uint64_t *payouts, char *err, size_t errlen);

/* "123.000000000001" from planck, exact (integer formatting); returns out. */
char *nawal_planck_to_dalla(char out[NAWAL_DALLA_STR_BYTES], uint64_t planck);

/* Strict decimal u64: digits only (no sign, spaces, "0x", or empty), no
 * overflow. Returns 0 or -1. */
int nawal_parse_u64(const char *s, uint64_t *out);

#endif
