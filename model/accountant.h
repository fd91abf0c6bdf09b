/* accountant.h - privacy accounting for DP-SGD: the Renyi differential
 * privacy (RDP) of the Poisson-subsampled Gaussian mechanism, its
 * composition over training steps, conversion to an (epsilon, delta)
 * guarantee, and the search for the noise multiplier that reaches a target
 * epsilon. The trainer charges every step that touched data to an
 * accountant (through the per-validator budget file, privacy_budget.h);
 * `nawal-agent privacy` is this file on the command line.
 *
 * The numbers are those of Opacus (opacus/accountants/analysis/rdp.py) and
 * TF Privacy (rdp_accountant.py), computed the same way:
 *
 *   One step samples each example with probability q and adds Gaussian
 *   noise of standard deviation sigma (the noise multiplier, in units of the
 *   clipping norm). Its RDP at order alpha > 1 is log(A_alpha) / (alpha - 1)
 *   (Mironov, Talwar, Zhang 2019, section 3.3), with A_alpha the binomial
 *   series  sum_i C(alpha, i) q^i (1-q)^(alpha-i) exp((i^2 - i) / (2 sigma^2))
 *   for integer alpha, and for fractional alpha the two series split at
 *   z0 = sigma^2 log(1/q - 1) + 1/2 with erfc weights, summed in log space
 *   until the terms fall below e^-30. Special cases: q == 0 gives 0,
 *   sigma == 0 gives +infinity, q == 1 gives the plain Gaussian
 *   alpha / (2 sigma^2). `steps` identical steps give steps x that.
 *
 *   Steps with different (q, sigma) compose by adding their RDP vectors
 *   order by order (tighter than adding epsilons); so do separate runs.
 *
 *   (epsilon, delta): the Balle et al. 2020 bound (Opacus
 *   get_privacy_spent), minimised over the orders:
 *     eps(alpha) = rdp(alpha) - (log delta + log alpha) / (alpha - 1)
 *                  + log((alpha - 1) / alpha)
 *   and, for comparison with older published numbers, the classic bound
 *   (Mironov 2017; Opacus before 1.0, TF Privacy before 2020):
 *     eps(alpha) = rdp(alpha) - log(delta) / (alpha - 1).
 *   Two refinements that are sound and change nothing in ordinary use:
 *   epsilon is never reported below 0 (the formula can dip below 0 for delta
 *   near 1), and an RDP vector that is 0 at every order (no step touched
 *   data, or q == 0) is reported as epsilon 0 rather than the conversion's
 *   floor.
 *
 * Orders must be finite, > 1 and <= NAWAL_RDP_MAX_ORDER (which bounds the
 * work per order). The default grid is Opacus's:
 * 1.1, 1.2, ..., 10.9 (1 + x/10, x = 1..99) then 12, 13, ..., 63.
 *
 * Every function that can fail returns 0 on success and -1 on bad input or
 * a numerical failure, with a message in (err, errlen) (which may be NULL).
 * Nothing is global: an accountant is a plain value the caller owns. */
#ifndef NAWAL_ACCOUNTANT_H
#define NAWAL_ACCOUNTANT_H

#include <stddef.h>
#include <stdint.h>

#define NAWAL_RDP_N_DEFAULT_ORDERS 151 /* 99 fractional-step orders + 52 integers */
#define NAWAL_RDP_MAX_ORDERS 256       /* orders an accountant can hold */
#define NAWAL_RDP_MAX_ORDER 1e5        /* largest order accepted */
#define NAWAL_NOISE_MAX_SIGMA 1e6      /* the search gives up above this (as Opacus) */

/* Fills orders[0..NAWAL_RDP_N_DEFAULT_ORDERS) with Opacus's default grid. */
void nawal_rdp_default_orders(double orders[NAWAL_RDP_N_DEFAULT_ORDERS]);

/* rdp[k] = RDP at orders[k] of `steps` steps of the subsampled Gaussian
 * mechanism with sampling rate q in [0, 1] and noise multiplier sigma >= 0
 * (finite). May be +infinity (sigma == 0). */
int nawal_rdp_compute(double q, double sigma, uint64_t steps, const double *orders, size_t n, double *rdp,
                      char *err, size_t errlen);

/* The smallest epsilon over the orders such that the mechanism is
 * (epsilon, delta)-DP, delta in (0, 1), by the Balle et al. 2020 bound;
 * *best_order (may be NULL) gets the order that attains it (the first one
 * on ties). rdp values must be >= 0 (+infinity allowed: epsilon is then
 * +infinity unless another order is finite). */
int nawal_rdp_to_epsilon(const double *orders, const double *rdp, size_t n, double delta, double *eps,
                         double *best_order, char *err, size_t errlen);

/* The same with the classic, looser bound eps = rdp - log(delta)/(alpha-1).
 * Kept for comparing with numbers published before the Balle bound; nawal
 * itself reports the Balle bound everywhere. */
int nawal_rdp_to_epsilon_classic(const double *orders, const double *rdp, size_t n, double delta, double *eps,
                                 double *best_order, char *err, size_t errlen);

/* An RDP accountant: an order grid and the RDP spent so far at each order. */
typedef struct {
    size_t n;
    double orders[NAWAL_RDP_MAX_ORDERS];
    double rdp[NAWAL_RDP_MAX_ORDERS];
} nawal_accountant;

/* Empty accountant (nothing spent) over orders[0..n), or over the default
 * grid when orders is NULL (n is then ignored). Orders need not be sorted
 * but must be distinct. */
int nawal_accountant_init(nawal_accountant *a, const double *orders, size_t n, char *err, size_t errlen);

/* Charges `steps` steps of (q, sigma). On failure *a is unchanged. */
int nawal_accountant_add(nawal_accountant *a, double q, double sigma, uint64_t steps, char *err, size_t errlen);

/* a += b, order by order (composition of two runs); both must use the same
 * orders in the same sequence. On failure *a is unchanged. */
int nawal_accountant_compose(nawal_accountant *a, const nawal_accountant *b, char *err, size_t errlen);

/* epsilon spent at delta (Balle bound) and the order attaining it. */
int nawal_accountant_epsilon(const nawal_accountant *a, double delta, double *eps, double *best_order, char *err,
                             size_t errlen);

/* epsilon that *a would reach after `steps` more steps of (q, sigma),
 * without changing *a: the check a trainer makes before a step, so it can
 * stop before the step that would cross its budget. */
int nawal_accountant_epsilon_after(const nawal_accountant *a, double q, double sigma, uint64_t steps, double delta,
                                   double *eps, double *best_order, char *err, size_t errlen);

/* The noise multiplier for `steps` steps at sampling rate q in (0, 1]
 * (default orders, Balle bound) to be (target_eps, delta)-DP: the search
 * doubles sigma from 1 until epsilon <= target_eps, then bisects.
 * Guarantees: the returned *sigma gives epsilon *eps_at (may be NULL)
 * <= target_eps, and either target_eps - *eps_at <= eps_tol (> 0; e.g.
 * 1e-4) or the bisection bracket around *sigma has shrunk to 1e-12
 * relative. Fails with a message saying why if target_eps cannot be reached:
 * below the floor the conversion gives with unbounded noise (about 0.10
 * at delta 1e-5 on the default grid) or needing sigma above
 * NAWAL_NOISE_MAX_SIGMA. */
int nawal_noise_multiplier_for_epsilon(double target_eps, double q, uint64_t steps, double delta, double eps_tol,
                                       double *sigma, double *eps_at, char *err, size_t errlen);

#endif
